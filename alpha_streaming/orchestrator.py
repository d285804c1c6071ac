"""`ServiceOrchestrator`: several services and plain FastStream apps in one process.

Start in the given order, stop in reverse (downstream consumers of a start-up side effect are
started after it and stopped before it). A supervisor restarts consume loops that died, and
SIGTERM/SIGINT trigger a graceful stop: each service stops fetching, finishes its in-flight
messages (their offsets are committed by error routing as they finish) and flushes its producer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Self

from faststream._internal.application import Application
from faststream.kafka import KafkaBroker

from alpha_streaming.errors import ClientStateError, ConfigError
from alpha_streaming.health import (
    DEFAULT_STALE_AFTER_S,
    ActivityProbe,
    HealthReport,
    HealthServer,
    ServiceHealth,
    probe_broker,
)
from alpha_streaming.service import StreamService

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ("ServiceOrchestrator",)

log = logging.getLogger(__name__)

DEFAULT_GRACEFUL_TIMEOUT_S = 30.0
SUPERVISE_INTERVAL_S = 1.0


class _Unit:
    """One supervised FastStream app: a built service's app, or a user's own."""

    def __init__(
        self,
        name: str,
        app: Application,
        *,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[], Awaitable[None]],
        redis: Redis | None = None,
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
                reasons = [_task_outcome(task) for task in sub.tasks]
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


def _verify_enhanced(app: Application) -> None:
    """A plain app that uses error routing must run it under MANUAL acks, or it loses events."""
    from middlewares.error_routing import ErrorRoutingMiddleware
    from middlewares.stack import verify_enhanced_broker

    for broker in app.brokers:
        if isinstance(broker, KafkaBroker) and any(
            isinstance(m, ErrorRoutingMiddleware) for m in broker.middlewares
        ):
            verify_enhanced_broker(broker)


def _task_outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return f"{type(exc).__name__}: {exc}" if exc else "returned"


class ServiceOrchestrator:
    """Runs built services and FastStream apps together, with health endpoints and graceful stop.

    ```python
    orchestrator = ServiceOrchestrator(risk_service, engine_service, health_port=8080)
    await orchestrator.run()   # until SIGTERM/SIGINT; returns after a clean stop
    ```
    `health_port=None` serves no HTTP (health stays available as `await orchestrator.health()`);
    `health_port=0` picks a free port (`orchestrator.health_port`).
    """

    def __init__(
        self,
        *units: StreamService | Application,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT_S,
        health_host: str = "127.0.0.1",
        health_port: int | None = None,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        supervise_interval_s: float = SUPERVISE_INTERVAL_S,
    ) -> None:
        if graceful_timeout <= 0:
            raise ConfigError(f"graceful_timeout must be > 0 seconds, got {graceful_timeout}")
        self._units: list[_Unit] = []
        self._graceful_timeout = graceful_timeout
        self._stale_after_s = stale_after_s
        self._supervise_interval_s = supervise_interval_s
        self._server = (
            HealthServer(self._live_report, self.health, host=health_host, port=health_port)
            if health_port is not None
            else None
        )
        self._supervisor: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._running = False
        for unit in units:
            self.add(unit)

    def add(self, unit: StreamService | Application, *, name: str | None = None) -> Self:
        """Add a built service or a FastStream app; started after those added before it."""
        if self._running:
            raise ClientStateError("add services before start(); the orchestrator is running")
        if isinstance(unit, StreamService):
            entry = _Unit(
                name or unit.name,
                unit.app,
                start=unit.start,
                stop=unit.stop,
                redis=unit.redis,
                activity=unit.activity,
            )
        elif isinstance(unit, Application):
            _verify_enhanced(unit)
            entry = _Unit(name or f"app-{len(self._units) + 1}", unit, start=unit.start, stop=unit.stop)
        else:
            raise ConfigError(
                f"cannot orchestrate {type(unit).__name__}; pass a built service "
                "(StreamServiceBuilder(...).build()) or a faststream.FastStream app"
            )
        if any(u.name == entry.name for u in self._units):
            raise ConfigError(
                f"two units are named {entry.name!r}; pass add(..., name='...') to tell them apart"
            )
        self._units.append(entry)
        return self

    @property
    def names(self) -> list[str]:
        return [u.name for u in self._units]

    @property
    def health_port(self) -> int:
        if self._server is None:
            raise ConfigError("no health endpoint: construct with health_port=<port> (0 picks a free one)")
        return self._server.port

    async def start(self) -> None:
        """Start every unit in order; if one fails, stop the ones already started and re-raise."""
        self._running, self._stopping = True, False
        self._stop_requested.clear()
        for unit in self._units:
            try:
                log.info("starting %s", unit.name)
                await unit.start()
            except BaseException:
                log.exception("%s failed to start; stopping the services already started", unit.name)
                await self.stop()
                raise
        if self._server is not None:
            await self._server.start()
        self._supervisor = asyncio.create_task(self._supervise(), name="alpha-orchestrator-supervisor")

    async def stop(self) -> None:
        """Stop every started unit in reverse order within the graceful timeout.

        Raises `ClientStateError` naming the units that did not stop in time or failed to stop
        (after trying every unit).
        """
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        deadline = time.monotonic() + self._graceful_timeout
        # A unit that hangs must not deprive the others of their chance to commit and flush:
        # each still gets at least its fair share, even past the deadline (which is then failed).
        fair_share = self._graceful_timeout / max(1, len(self._units))
        failed: list[str] = []
        for unit in reversed(self._units):
            if not unit.started:
                continue
            log.info("stopping %s", unit.name)
            try:
                async with asyncio.timeout(max(fair_share, deadline - time.monotonic())):
                    await unit.stop()
            except TimeoutError:
                failed.append(f"{unit.name} (timed out)")
            except Exception as exc:
                log.exception("%s failed to stop cleanly", unit.name)
                failed.append(f"{unit.name} ({type(exc).__name__}: {exc})")
        if self._server is not None:
            await self._server.stop()
        self._running = False
        if failed:
            raise ClientStateError(
                f"graceful stop within {self._graceful_timeout}s failed for: {', '.join(failed)}"
            )

    def request_stop(self) -> None:
        """Ask `run()` to stop gracefully (what SIGTERM and SIGINT do)."""
        if self._stop_requested.is_set():
            log.warning("already stopping; waiting for in-flight work (graceful timeout applies)")
        self._stop_requested.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or `request_stop()`), then stop gracefully.

        Returns normally after a clean stop, so `asyncio.run(orchestrator.run())` exits 0.
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop_requested.wait()
            log.info("stop requested; finishing in-flight work")
            await self.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def health(self) -> HealthReport:
        """Readiness of every unit (one Kafka metadata request and one Redis PING per unit)."""
        services = await asyncio.gather(*(u.health(self._stale_after_s) for u in self._units))
        return HealthReport(tuple(services), stopping=self._stopping)

    async def _live_report(self) -> HealthReport:
        # Liveness needs no network round trip: it only asks whether the loops still run.
        services = [await u.health(self._stale_after_s, network=False) for u in self._units]
        return HealthReport(tuple(services), stopping=self._stopping)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self._supervise_interval_s)
            for unit in self._units:
                try:
                    await unit.revive_dead_loops()
                except Exception:
                    log.exception("%s: restarting a consume loop failed; will retry", unit.name)
