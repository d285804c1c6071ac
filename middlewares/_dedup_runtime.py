"""One message's pass through dedup: claim, run the handler, then mark done or release.

Redis outage (a refused connection, a timeout, CLUSTERDOWN/TRYAGAIN): "pause" (default) retries
the message's own request for up to `outage_pause_s`, then redelivers (nothing runs without
dedup); "fail_open" runs the handler without dedup. A done marker that cannot be written after the
handler ran is given up (redelivering would run it again). The requests go through `DedupStore`,
which sends those of one event-loop turn together; an outage reaches every message in the call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import RedeliveryRequested
from middlewares._dedup_store import lease_key
from middlewares._envelope import group_id_of
from middlewares._gate import done_written, hold_slot_until_done
from middlewares._lease_scripts import CLAIMED, DONE
from middlewares._state import MessageState, Outcome, state_of

if TYPE_CHECKING:
    from types import TracebackType

    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

    from middlewares._dedup import DeduplicationMiddleware

__all__ = ("OUTAGE_ERRORS", "DedupRuntime")

log = logging.getLogger("middlewares._dedup")

# A Redis Cluster that lost a master answers CLUSTERDOWN (or TRYAGAIN while slots move): an outage
# like a refused connection, never a handler failure to retry and dead-letter.
# redis-py's cluster client can fail a call on a connection reset under it during a failover
# with `AttributeError: 'NoneType' object has no attribute 'writelines'` (seen in the Redis
# Cluster master-kill scenario): an outage too, never a handler failure to retry and dead-letter.
OUTAGE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    AttributeError,
)
T = TypeVar("T")


class _FailOpen(Exception):
    """Redis is down and the policy is fail-open: run the handler without dedup."""


# Lease owner tokens: unique per process (random prefix) and per message (counter); cheaper than
# a uuid4 per message on the single-message hot path.
_OWNER_PREFIX = uuid.uuid4().hex[:16]
_owner_numbers = itertools.count()


class DedupRuntime(BaseMiddleware[Any, Any]):
    __slots__ = ("_config", "_deduplicated", "_owner", "_prefix")

    def __init__(self, msg: Any, /, *, context: ContextRepo, config: DeduplicationMiddleware) -> None:
        super().__init__(msg, context=context)
        self._config = config
        self._owner = f"{_OWNER_PREFIX}-{next(_owner_numbers)}"
        self._deduplicated = False
        self._prefix = ""

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        state = state_of(msg)
        batch = isinstance(msg.raw_message, tuple | list)
        envelopes = state.batch_envelopes if batch else (state.envelope,) if state.envelope else ()
        ids = [e.id for e in envelopes] if envelopes or batch else _header_id(msg)
        if not ids:
            return await call_next(msg)
        self._prefix = self._config.key_prefix(group_id_of(self.context))
        try:
            fresh = await self._claim(ids, state)
        except _FailOpen:
            state.redis_outage = "failed_open"
            return await call_next(msg)
        if not fresh:
            self._deduplicated = True
            state.outcome = Outcome.DEDUPLICATED  # counted as outcome="deduplicated" by metrics
            log.debug("duplicate suppressed: the event is already done")
            raise AckMessage()
        if envelopes:
            self._note_beyond_window([envelopes[i] for i in fresh])
        claimed = [ids[i] for i in fresh]
        if batch and len(fresh) < len(ids):
            _narrow_batch(msg, state, fresh)  # `CurrentEnvelopes` reads the narrowed state
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

    async def _claim(self, ids: list[str], state: MessageState) -> list[int]:
        """Indexes of the events we now own; waits for events another consumer is processing."""
        config, prefix = self._config, self._prefix
        cache, store = config.cache, config.store
        # An event repeated inside one batch runs once: only its first occurrence is claimed.
        seen: set[str] = set()
        pending = []
        for i, event_id in enumerate(ids):
            if event_id not in seen and prefix + event_id not in cache:
                pending.append(i)
            seen.add(event_id)
        fresh: list[int] = []
        deadline = time.monotonic() + config.wait_s
        delay = 0.02
        while pending:
            todo = [ids[i] for i in pending]
            answers = await self._redis(store.claim, todo, state)
            held = []
            for i, answer in zip(pending, answers, strict=True):
                if answer == CLAIMED:
                    fresh.append(i)
                elif answer == DONE:
                    cache.add(prefix + ids[i])
                else:
                    held.append(i)
            pending = held
            if pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Still in flight elsewhere: never run it twice; decide on a later delivery.
                    await self._release_quietly([ids[i] for i in fresh])
                    raise RedeliveryRequested(
                        f"{len(pending)} event(s) still being processed by another consumer after "
                        f"{config.wait_s:.1f} s (e.g. {prefix + ids[pending[0]]})"
                    )
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
        return sorted(fresh)

    async def _run(
        self, call_next: AsyncFuncAny, msg: StreamMessage[Any], ids: list[str], state: MessageState
    ) -> Any:
        config = self._config
        leases = config.leases
        leases.hold(self._owner, [lease_key(self._prefix, i) for i in ids], self._prefix)
        if config.after_commit is None:
            hold_slot_until_done(msg.raw_message)
        try:
            result = await call_next(msg)
        except AckMessage:
            # The handler finished (its own `AckMessage`, or `OutputsMiddleware` after the
            # returned event was acknowledged): done, like a return.
            await self._done(ids, state, msg)
            raise
        except BaseException:
            leases.drop(self._owner)
            await self._release_quietly(ids)
            raise
        await self._done(ids, state, msg)
        return result

    async def _done(self, ids: list[str], state: MessageState, msg: StreamMessage[Any]) -> None:
        config, owner = self._config, self._owner
        if config.after_commit is not None:
            # Exactly-once: the outputs are visible only once the transaction commits. The lease
            # is kept (renewed) until then; an aborted batch releases it, so the redo runs again.
            async def committed() -> None:
                config.leases.drop(owner)
                await self._mark_done(ids, state)

            async def aborted() -> None:
                config.leases.drop(owner)
                await self._release_quietly(ids)

            config.after_commit(committed, aborted)
            return
        config.leases.drop(owner)
        await self._mark_done(ids, state)
        done_written(msg.raw_message)

    async def _mark_done(self, ids: list[str], state: MessageState) -> None:
        config, prefix = self._config, self._prefix
        try:
            await self._redis(config.store.done, ids, state)
        except Exception as exc:  # whatever failed, the handler ran
            # The handler ran: redelivering or retrying would run it again, so accept the small
            # risk that a later copy of this event is not recognised.
            log.error(
                "dedup: done marker not written for %d event(s) (%s); processing continues", len(ids), exc
            )
        else:
            for event_id in ids:
                config.cache.add(prefix + event_id)

    async def _release_quietly(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self._config.store.release(self._prefix, ids, self._owner)
        except OUTAGE_ERRORS as exc:
            # The lease expires on its own; a retry of this message re-claims it as its owner.
            log.warning("dedup: could not release %d lease(s) (%s)", len(ids), exc)

    async def _redis(
        self, request: Callable[[str, list[str], str], Awaitable[T]], ids: list[str], state: MessageState
    ) -> T:
        """Run one store request under the outage policy (retried alone, coalesced with others)."""
        config = self._config
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                return await request(self._prefix, ids, self._owner)
            except OUTAGE_ERRORS as exc:
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

    def _note_beyond_window(self, envelopes: list[EventEnvelope]) -> None:
        """Count new-looking events created before the window: a repeat of one would not be seen."""
        config = self._config
        now = time.time()
        old = sum(1 for e in envelopes if e.ts.timestamp() < now - config.window_s)
        if old:
            config.beyond_window += old
            if now - config.beyond_window_logged_at >= 60:  # a backlog would log every message
                config.beyond_window_logged_at = now
                log.info(
                    "dedup: %d event(s) older than the %.0f s window claimed as new (%d so far)",
                    old,
                    config.window_s,
                    config.beyond_window,
                )


def _header_id(msg: StreamMessage[Any]) -> list[str]:
    event_id = msg.headers.get(EnvelopeHeaders.ID)
    return [event_id] if event_id else []


def _narrow_batch(msg: StreamMessage[Any], state: MessageState, keep: list[int]) -> None:
    """Hand the handler only the events not seen before (the envelope decoder reads the envelopes)."""
    bodies: list[Any] = msg.body  # type: ignore[assignment]  # a batch body is a list
    msg.body = [bodies[i] for i in keep]
    if len(msg.batch_headers) == len(bodies):
        msg.batch_headers = [msg.batch_headers[i] for i in keep]
    state.batch_envelopes = tuple(state.batch_envelopes[i] for i in keep)
    msg.clear_cache()
