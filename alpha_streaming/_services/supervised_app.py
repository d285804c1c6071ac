"""`SupervisedApp`: one FastStream app under the orchestrator, with its lifecycle and health.

The orchestrator keeps one per unit it runs (a built service's app, or a user's own FastStream
app): it starts and stops it inside the app's lifespan, reports its health from the live
clients, and restarts a subscriber whose consume loop died while the app still runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from faststream.kafka import KafkaBroker

from alpha_streaming._errors import ConfigError
from alpha_streaming._services.activity import ActivityProbe
from alpha_streaming._services.health import ServiceHealth, probe_broker
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._tier import wrong_ack_policy

if TYPE_CHECKING:
    from faststream._internal.application import Application

    from middlewares._lease_scripts import RedisClient

__all__ = ("SupervisedApp", "task_outcome", "verify_enhanced_app")

log = logging.getLogger(__name__)


class SupervisedApp:
    """One supervised FastStream app: a built service's app, or a user's own."""

    def __init__(
        self,
        name: str,
        app: Application,
        *,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        redis: RedisClient | None = None,
        activity: ActivityProbe | None = None,
    ) -> None:
        self.name, self.app = name, app
        self._start, self._stop = start, stop
        self.redis, self.activity = redis, activity
        self.started = False
        self.restarts: dict[int, int] = {}
        self._lifespan = AsyncExitStack()

    @property
    def brokers(self) -> list[KafkaBroker]:
        return [b for b in self.app.brokers if isinstance(b, KafkaBroker)]

    async def start(self) -> None:
        await self._lifespan.enter_async_context(self.app.lifespan_context())
        await self._start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        try:
            await self._stop()
        finally:
            await self._lifespan.aclose()

    async def health(self, stale_after_s: float, *, network: bool = True) -> ServiceHealth:
        snapshots = [
            await probe_broker(
                self.name,
                broker,
                started=self.started,
                redis=self.redis,
                activity=self.activity,
                restarts=self.restarts,
                stale_after_s=stale_after_s,
                network=network,
            )
            for broker in self.brokers
        ]
        if not snapshots:
            return ServiceHealth(self.name, self.started, self.started, None, stale_after_s=stale_after_s)
        first = snapshots[0]
        return ServiceHealth(
            self.name,
            first.started,
            all(s.broker_connected for s in snapshots),
            first.redis_reachable,
            tuple(sub for s in snapshots for sub in s.subscribers),
            stale_after_s,
        )

    async def revive_dead_loops(self) -> None:
        """Restart a subscriber whose consume loop ended while the app still runs."""
        for broker in self.brokers:
            sub: Any
            for sub in broker.subscribers:
                if not (self.started and sub.running and sub.calls and sub.tasks):
                    continue
                if any(not task.done() for task in sub.tasks):
                    continue
                reasons = [task_outcome(task) for task in sub.tasks]
                self.restarts[id(sub)] = self.restarts.get(id(sub), 0) + 1
                log.error(
                    "%s: consume loop of %s ended (%s); restarting the subscriber (restart #%d)",
                    self.name,
                    ",".join(sub.topic_names),
                    "; ".join(reasons),
                    self.restarts[id(sub)],
                )
                # A full stop/start: the loop may have ended because its consumer stopped.
                await sub.stop()
                await sub.start()


def verify_enhanced_app(app: Application) -> None:
    """An app that uses error routing must run it under MANUAL acks, or it loses events.

    `EnhancedTier.install` checks its own brokers at startup; this covers apps that carry the
    middlewares without installing a tier.
    """
    problems = [
        problem
        for broker in app.brokers
        if isinstance(broker, KafkaBroker)
        and any(isinstance(m, ErrorRoutingMiddleware) for m in broker.middlewares)
        for sub in broker.subscribers
        if (problem := wrong_ack_policy(sub)) is not None
    ]
    if problems:
        raise ConfigError("; ".join(problems))


def task_outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return f"{type(exc).__name__}: {exc}" if exc else "returned"
