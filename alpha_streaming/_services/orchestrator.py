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
from typing import Self

from faststream._internal.application import Application

from alpha_streaming._errors import ClientStateError, ConfigError
from alpha_streaming._services.health import DEFAULT_STALE_AFTER_S, HealthReport
from alpha_streaming._services.health_server import HealthServer
from alpha_streaming._services.service import StreamService
from alpha_streaming._services.supervised_app import SupervisedApp, verify_enhanced_app

__all__ = ("ServiceOrchestrator",)

log = logging.getLogger(__name__)

DEFAULT_GRACEFUL_TIMEOUT_S = 30.0
SUPERVISE_INTERVAL_S = 1.0


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
        self._units: list[SupervisedApp] = []
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
            entry = SupervisedApp(
                name or unit.name,
                unit.app,
                start=unit.start,
                stop=unit.stop,
                redis=unit.redis,
                activity=unit.activity,
            )
        elif isinstance(unit, Application):
            verify_enhanced_app(unit)
            entry = SupervisedApp(
                name or f"app-{len(self._units) + 1}", unit, start=unit.start, stop=unit.stop
            )
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
