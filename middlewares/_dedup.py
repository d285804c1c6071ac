"""`DeduplicationMiddleware`: effectively-once handler execution on top of at-least-once Kafka.

One Redis key per event and consumer group, `alpha:dedup:{<namespace>:<group>}:<event id>` (the
envelope's id, never FastStream's `message_id`). The braces are a Redis Cluster hash tag: a group's
keys share one slot, so one script call may cover a batch (`key_prefix(group)` builds it).
The Lua scripts are in `_lease_scripts`:
claim takes a lease (or answers "done"), one timer per middleware renews every live lease,
success (a return, or `AckMessage` once the outputs were acknowledged) turns it into the done
marker, any other outcome releases it so a retry or a DLQ replay runs again. A duplicate that
finds the lease held waits up to the lease TTL, then is redelivered rather than run twice.
Batches are deduplicated per event behind `EnvelopeMiddleware`; the handler gets only new events.

Redis outage: "pause" (default) retries each call for up to `outage_pause_s`, then redelivers
(nothing runs without dedup); "fail_open" runs the handler without dedup. A done marker that
cannot be written after the handler ran is given up (redelivering would run it again).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from alpha_streaming._envelope import EnvelopeHeaders
from alpha_streaming._errors import ConfigError, RedeliveryRequested
from alpha_streaming._settings import DedupSettings
from middlewares._envelope import ENVELOPES_KEY, group_id_of
from middlewares._lease_renewal import LeaseRenewer
from middlewares._lease_scripts import CLAIMED, DONE, register_lease_scripts
from middlewares._lru import LruTtlSet
from middlewares._state import MessageState, Outcome, state_of

if TYPE_CHECKING:
    from types import TracebackType

    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from redis.commands.core import AsyncScript

    from middlewares._lease_scripts import RedisClient

__all__ = ("DeduplicationMiddleware",)

log = logging.getLogger(__name__)

KEY_PREFIX = "alpha:dedup"
# A Redis Cluster that lost a master answers CLUSTERDOWN (or TRYAGAIN while slots move): an outage
# like a refused connection, never a handler failure to retry and dead-letter.
_OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, TryAgainError)


class DeduplicationMiddleware:
    """Runs each event's handler once per consumer group, using Redis leases and done markers."""

    def __init__(self, redis: RedisClient, *, namespace: str, settings: DedupSettings | None = None) -> None:
        if not namespace or ":" in namespace:
            raise ConfigError(f"dedup namespace must be a non-empty name without ':', got {namespace!r}")
        settings = settings if settings is not None else DedupSettings()
        self.redis = redis
        self.namespace = namespace
        self.lease_ms = int(settings.lease_ttl_s * 1000)
        self.done_ms = int(settings.done_ttl_s * 1000)
        self.on_redis_outage = settings.on_redis_outage
        self.outage_pause_s = settings.outage_pause_s
        # Bounded by the lease TTL, so a waiting duplicate never outlasts the original's lease.
        self.wait_s = settings.lease_ttl_s
        self.renew_every_s = settings.lease_ttl_s / 3
        self.cache = LruTtlSet(settings.local_cache_size, settings.done_ttl_s)
        self.claim, self.mark_done, self.release, renew = register_lease_scripts(redis)
        lease_ms = self.lease_ms
        self.leases = LeaseRenewer(
            lambda keys, owner: renew(keys, [owner, lease_ms]), every_s=self.renew_every_s
        )
        self._prefixes: dict[str | None, str] = {}

    def key_prefix(self, group_id: str | None) -> str:
        prefix = self._prefixes.get(group_id)
        if prefix is None:
            # `{namespace:group}` is a Redis Cluster hash tag: every key of one consumer group is in
            # one slot, so a script call over a batch of them is allowed on a cluster.
            tag = f"{{{self.namespace}:{group_id or '-'}}}"
            prefix = self._prefixes[group_id] = f"{KEY_PREFIX}:{tag}:"
        return prefix

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _DedupRuntime(msg, context=context, config=self)

    async def close(self) -> None:
        """Stop renewing leases (after the broker stopped; a renewal under way finishes first)."""
        await self.leases.close()

    def __repr__(self) -> str:
        return (
            f"DeduplicationMiddleware(namespace={self.namespace!r}, lease_ttl_s={self.lease_ms / 1000}, "
            f"on_redis_outage={self.on_redis_outage!r})"
        )


class _FailOpen(Exception):
    """Redis is down and the policy is fail-open: run the handler without dedup."""


# Lease owner tokens: unique per process (random prefix) and per message (counter); cheaper than
# a uuid4 per message on the single-message hot path.
_OWNER_PREFIX = uuid.uuid4().hex[:16]
_owner_numbers = itertools.count()


class _DedupRuntime(BaseMiddleware[Any, Any]):
    __slots__ = ("_config", "_deduplicated", "_owner")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: DeduplicationMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        self._owner = f"{_OWNER_PREFIX}-{next(_owner_numbers)}"
        self._deduplicated = False

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        state = state_of(msg)
        batch = isinstance(msg.raw_message, tuple | list)
        ids = _batch_ids(state) if batch else _single_id(msg, state)
        if not ids:
            return await call_next(msg)
        prefix = self._config.key_prefix(group_id_of(self.context))
        keys = [prefix + event_id for event_id in ids]
        try:
            fresh = await self._claim(keys, state)
        except _FailOpen:
            state.redis_outage = "failed_open"
            return await call_next(msg)
        if not fresh:
            self._deduplicated = True
            state.outcome = Outcome.DEDUPLICATED  # counted as outcome="deduplicated" by metrics
            log.debug("duplicate suppressed: the event is already done")
            raise AckMessage()
        claimed = [keys[i] for i in fresh]
        if batch and len(fresh) < len(ids):
            _narrow_batch(msg, state, fresh)
            with self.context.scope(ENVELOPES_KEY, state.batch_envelopes):
                return await self._run(call_next, msg, claimed, state)
        return await self._run(call_next, msg, claimed, state)

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        # Our own AckMessage did its job (error routing saw it in consume_scope and committed);
        # it must not be logged as an error or escape TestKafkaBroker.publish().
        return self._deduplicated and exc_type is AckMessage

    async def _claim(self, keys: list[str], state: MessageState) -> list[int]:
        """Indexes of the keys we now own; waits for keys another consumer is processing."""
        config = self._config
        cache = config.cache
        # An event repeated inside one batch runs once: only its first occurrence is claimed.
        seen: set[str] = set()
        pending = []
        for i, key in enumerate(keys):
            if key not in seen and key not in cache:
                pending.append(i)
            seen.add(key)
        fresh: list[int] = []
        deadline = time.monotonic() + config.wait_s
        delay = 0.02
        while pending:
            todo = [keys[i] for i in pending]
            answers = await self._redis(config.claim, todo, [self._owner, config.lease_ms], state)
            held = []
            for i, answer in zip(pending, answers, strict=True):
                if answer == CLAIMED:
                    fresh.append(i)
                elif answer == DONE:
                    cache.add(keys[i])
                else:
                    held.append(i)
            pending = held
            if pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Still in flight elsewhere: never run it twice; decide on a later delivery.
                    await self._release_quietly([keys[i] for i in fresh])
                    raise RedeliveryRequested(
                        f"{len(pending)} event(s) still being processed by another consumer after "
                        f"{config.wait_s:.1f} s (e.g. {keys[pending[0]]})"
                    )
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
        return sorted(fresh)

    async def _run(
        self, call_next: AsyncFuncAny, msg: StreamMessage[Any], keys: list[str], state: MessageState
    ) -> Any:
        leases = self._config.leases
        leases.hold(self._owner, keys)
        try:
            result = await call_next(msg)
        except AckMessage:
            # The handler finished (its own `AckMessage`, or `OutputsMiddleware` after the
            # returned event was acknowledged): done, like a return.
            leases.drop(self._owner)
            await self._mark_done(keys, state)
            raise
        except BaseException:
            leases.drop(self._owner)
            await self._release_quietly(keys)
            raise
        leases.drop(self._owner)
        await self._mark_done(keys, state)
        return result

    async def _mark_done(self, keys: list[str], state: MessageState) -> None:
        config = self._config
        try:
            await self._redis(config.mark_done, keys, [self._owner, config.done_ms], state)
        except (RedeliveryRequested, _FailOpen) as exc:
            # The handler ran: redelivering would run it again, so accept the small risk that a
            # later copy of this event is not recognised.
            log.error(
                "dedup: done marker not written for %d event(s) (%s); processing continues", len(keys), exc
            )
        else:
            for key in keys:
                config.cache.add(key)

    async def _release_quietly(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await self._config.release(list(keys), [self._owner])
        except _OUTAGE_ERRORS as exc:
            # The lease expires on its own; a retry of this message re-claims it as its owner.
            log.warning("dedup: could not release %d lease(s) (%s)", len(keys), exc)

    async def _redis(self, script: AsyncScript, keys: list[str], args: list[Any], state: MessageState) -> Any:
        """Run one Lua script under the outage policy."""
        config = self._config
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                return await script(keys, args)
            except _OUTAGE_ERRORS as exc:
                if config.on_redis_outage == "fail_open":
                    raise _FailOpen(str(exc)) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + config.outage_pause_s
                    state.redis_outage = "paused"
                    log.warning(
                        "dedup: Redis unavailable (%s); pausing up to %.0f s", exc, config.outage_pause_s
                    )
                if now >= deadline:
                    raise RedeliveryRequested(
                        f"Redis unavailable for {config.outage_pause_s:.0f} s; redelivering the message"
                    ) from exc
                await asyncio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 1.0)


def _single_id(msg: StreamMessage[Any], state: MessageState) -> list[str]:
    if state.envelope is not None:
        return [state.envelope.id]
    event_id = msg.headers.get(EnvelopeHeaders.ID)
    return [event_id] if event_id else []


def _batch_ids(state: MessageState) -> list[str]:
    return [envelope.id for envelope in state.batch_envelopes]


def _narrow_batch(msg: StreamMessage[Any], state: MessageState, keep: list[int]) -> None:
    """Hand the handler only the events not seen before (the envelope decoder reads the envelopes)."""
    bodies: list[Any] = msg.body  # type: ignore[assignment]  # a batch body is a list
    msg.body = [bodies[i] for i in keep]
    if len(msg.batch_headers) == len(bodies):
        msg.batch_headers = [msg.batch_headers[i] for i in keep]
    state.batch_envelopes = tuple(state.batch_envelopes[i] for i in keep)
    msg.clear_cache()
