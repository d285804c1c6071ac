"""`DeduplicationMiddleware`: effectively-once handler execution on top of at-least-once Kafka.

Keys per event and consumer group (the envelope's id, never FastStream's `message_id`) under
`alpha:dedup:{<namespace>:<group>}:` (`key_prefix(group)`); the braces are a Redis Cluster hash
tag, so a group's keys share one slot and one script call may cover every event in flight.
A claim takes a short lease (`<prefix><event id>`, renewed by one timer per middleware) or
answers "done"; success (a return, or `AckMessage` once the outputs were acknowledged) writes a
compact done marker, kept for the dedup window (`_lease_scripts` has the layout); any other
outcome releases the lease so a retry or a DLQ replay runs again. A duplicate that finds the lease
held waits up to the lease TTL, then is redelivered rather than run twice. Batches are deduplicated
per event behind `EnvelopeMiddleware`; the handler gets only new events. `DedupStore` sends the
requests of one event-loop turn together. Redis outage policy: `_dedup_runtime`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import DedupSettings
from middlewares._dedup_runtime import DedupRuntime
from middlewares._dedup_store import DedupStore, lease_key
from middlewares._lease_renewal import LeaseRenewer
from middlewares._lease_scripts import DONE, HELD, register_lease_scripts
from middlewares._lru import LruTtlSet

if TYPE_CHECKING:
    from faststream import BaseMiddleware
    from faststream._internal.context.repository import ContextRepo

    from middlewares._lease_scripts import RedisClient

__all__ = ("KEY_PREFIX", "DeduplicationMiddleware")

KEY_PREFIX = "alpha:dedup"


class DeduplicationMiddleware:
    """Runs each event's handler once per consumer group, using Redis leases and done markers."""

    def __init__(self, redis: RedisClient, *, namespace: str, settings: DedupSettings | None = None) -> None:
        if not namespace or ":" in namespace:
            raise ConfigError(f"dedup namespace must be a non-empty name without ':', got {namespace!r}")
        settings = settings if settings is not None else DedupSettings()
        self.redis = redis
        self.namespace = namespace
        self.lease_ms = int(settings.lease_ttl_s * 1000)
        self.window_s = settings.window_s
        self.done_ms = int(settings.window_s * 1000)
        self.on_redis_outage = settings.on_redis_outage
        self.outage_pause_s = settings.outage_pause_s
        # Bounded by the lease TTL, so a waiting duplicate never outlasts the original's lease.
        self.wait_s = settings.lease_ttl_s
        self.cache = LruTtlSet(settings.local_cache_size, settings.window_s)
        script, renew = register_lease_scripts(redis)
        self.store = DedupStore(script, lease_ms=self.lease_ms, window_ms=self.done_ms)
        lease_ms = self.lease_ms
        self.leases = LeaseRenewer(
            lambda keys, owners: renew(keys, [lease_ms, *owners]), every_s=settings.lease_ttl_s / 3
        )
        self.after_commit: (
            Callable[[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]], None] | None
        ) = None
        """Exactly-once (set by the tier): done markers wait for the transaction's commit."""
        self.beyond_window = 0
        """Events claimed as new although older than the window: repeats it can no longer recognise."""
        self.beyond_window_logged_at = 0.0
        self._prefixes: dict[str | None, str] = {}

    def key_prefix(self, group_id: str | None) -> str:
        """`alpha:dedup:{<namespace>:<group>}:`, the start of every dedup key of that consumer group."""
        prefix = self._prefixes.get(group_id)
        if prefix is None:
            # `{namespace:group}` is a Redis Cluster hash tag: every key of one consumer group is in
            # one slot, so a script call over a batch of them is allowed on a cluster.
            tag = f"{{{self.namespace}:{group_id or '-'}}}"
            prefix = self._prefixes[group_id] = f"{KEY_PREFIX}:{tag}:"
        return prefix

    def lease_key(self, group_id: str | None, event_id: str) -> str:
        """The Redis key of the event's lease while it is in flight (its owner token as value)."""
        return lease_key(self.key_prefix(group_id), event_id)

    async def marker(self, group_id: str | None, event_id: str) -> Literal["done", "leased"] | None:
        """What Redis remembers of the event for this group: done, in flight, or nothing."""
        [answer] = await self.store.peek(self.key_prefix(group_id), [event_id])
        return "done" if answer == DONE else "leased" if answer == HELD else None

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return DedupRuntime(msg, context=context, config=self)

    async def close(self) -> None:
        """Stop renewing leases and finish the Redis calls under way (after the broker stopped)."""
        await self.leases.close()
        await self.store.aclose()

    def __repr__(self) -> str:
        return (
            f"DeduplicationMiddleware(namespace={self.namespace!r}, lease_ttl_s={self.lease_ms / 1000}, "
            f"window_s={self.window_s}, on_redis_outage={self.on_redis_outage!r})"
        )
