"""ServiceOrchestrator logic with in-memory brokers: order, rollback, timeouts, signals, HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, TestKafkaBroker

from alpha_streaming._errors import ClientStateError, ConfigError
from alpha_streaming._services.health import HealthReport, ServiceHealth, SubscriberHealth
from alpha_streaming._services.orchestrator import ServiceOrchestrator
from middlewares._error_routing import ErrorRoutingMiddleware
from tests.support import eventually


def recording_app(
    name: str, events: list[str], *, fail_start: bool = False, slow_stop: float = 0.0
) -> FastStream:
    broker = KafkaBroker()

    @broker.subscriber(f"{name}.in", group_id=f"{name}-group")
    async def handle(body: dict[str, object]) -> None:
        events.append(f"{name}:handled")

    async def on_start() -> None:
        if fail_start:
            raise RuntimeError(f"{name} cannot start")
        events.append(f"{name}:start")

    async def on_stop() -> None:
        await asyncio.sleep(slow_stop)
        events.append(f"{name}:stop")

    return FastStream(broker, on_startup=[on_start], on_shutdown=[on_stop])


@asynccontextmanager
async def in_memory(*apps: FastStream) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for app in apps:
            assert app.broker is not None
            await stack.enter_async_context(TestKafkaBroker(app.broker))  # type: ignore[arg-type]
        yield


async def test_starts_in_order_and_stops_in_reverse() -> None:
    events: list[str] = []
    apps = [recording_app(n, events) for n in ("feed", "strategy", "risk")]
    orchestrator = ServiceOrchestrator(*apps)
    async with in_memory(*apps):
        await orchestrator.start()
        await orchestrator.stop()
    assert events == [
        "feed:start",
        "strategy:start",
        "risk:start",
        "risk:stop",
        "strategy:stop",
        "feed:stop",
    ]
    assert orchestrator.names == ["app-1", "app-2", "app-3"]


async def test_failed_start_stops_what_already_started_and_reraises() -> None:
    events: list[str] = []
    apps = [
        recording_app("feed", events),
        recording_app("strategy", events),
        recording_app("risk", events, fail_start=True),
    ]
    orchestrator = ServiceOrchestrator(*apps)
    async with in_memory(*apps):
        with pytest.raises(RuntimeError, match="risk cannot start"):
            await orchestrator.start()
    assert events == ["feed:start", "strategy:start", "strategy:stop", "feed:stop"]


async def test_stop_past_the_graceful_timeout_names_the_unit_and_still_stops_the_others() -> None:
    events: list[str] = []
    apps = [recording_app("feed", events), recording_app("slow", events, slow_stop=5.0)]
    orchestrator = ServiceOrchestrator(graceful_timeout=0.3)
    orchestrator.add(apps[0], name="feed").add(apps[1], name="slow")
    async with in_memory(*apps):
        await orchestrator.start()
        with pytest.raises(ClientStateError, match=r"slow \(timed out\)"):
            await orchestrator.stop()
    assert "feed:stop" in events
    assert "slow:stop" not in events


async def test_run_returns_after_sigterm_with_everything_stopped() -> None:
    events: list[str] = []
    apps = [recording_app("feed", events), recording_app("risk", events)]
    orchestrator = ServiceOrchestrator(*apps)
    async with in_memory(*apps):
        runner = asyncio.create_task(orchestrator.run())
        await eventually(lambda: events == ["feed:start", "risk:start"], "both units to start")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(runner, 10)
    assert events[2:] == ["risk:stop", "feed:stop"]
    # The handlers are removed again: this process's SIGTERM behaves as before.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)


async def test_request_stop_ends_run() -> None:
    events: list[str] = []
    app = recording_app("solo", events)
    orchestrator = ServiceOrchestrator(app)
    async with in_memory(app):
        runner = asyncio.create_task(orchestrator.run())
        await eventually(lambda: bool(events), "the unit to start")
        orchestrator.request_stop()
        await asyncio.wait_for(runner, 10)
    assert events == ["solo:start", "solo:stop"]


def test_rejects_unknown_units_and_duplicate_names() -> None:
    with pytest.raises(ConfigError, match="pass a built service"):
        ServiceOrchestrator(object())  # type: ignore[arg-type]
    app_a, app_b = FastStream(KafkaBroker()), FastStream(KafkaBroker())
    orchestrator = ServiceOrchestrator().add(app_a, name="same")
    with pytest.raises(ConfigError, match="two units are named 'same'"):
        orchestrator.add(app_b, name="same")
    with pytest.raises(ConfigError, match="graceful_timeout"):
        ServiceOrchestrator(graceful_timeout=0)


def test_an_app_with_error_routing_but_no_tier_is_refused_unless_its_acks_are_manual() -> None:
    """Without `EnhancedTier.install`, nothing else checks the ack policy before messages flow."""
    broker = KafkaBroker(middlewares=(ErrorRoutingMiddleware(service="svc"),))  # default: ACK_FIRST

    @broker.subscriber("paper.fills", group_id="risk")
    async def auto(body: dict[str, object]) -> None: ...

    @broker.subscriber("paper.orders", group_id="risk", ack_policy=AckPolicy.MANUAL)
    async def manual(body: dict[str, object]) -> None: ...

    with pytest.raises(ConfigError, match=r"AckPolicy\.MANUAL") as refused:
        ServiceOrchestrator(FastStream(broker))
    assert "paper.fills" in str(refused.value)
    assert "paper.orders" not in str(refused.value)

    fixed = KafkaBroker(middlewares=(ErrorRoutingMiddleware(service="svc"),), ack_policy=AckPolicy.MANUAL)
    fixed.subscriber("paper.fills", group_id="risk")(auto)
    assert ServiceOrchestrator(FastStream(fixed)).names == ["app-1"]
    plain = KafkaBroker()  # no error routing: its own ack policy is the app's business
    plain.subscriber("paper.fills", group_id="risk")(auto)
    assert ServiceOrchestrator(FastStream(plain)).names == ["app-1"]


def test_health_port_without_endpoint_says_how_to_enable_it() -> None:
    with pytest.raises(ConfigError, match="health_port="):
        _ = ServiceOrchestrator().health_port


def subscriber(**overrides: object) -> SubscriberHealth:
    values: dict[str, object] = {
        "topics": ("paper.signals.raw",),
        "group_id": "risk",
        "partitions": ("paper.signals.raw:0",),
        "consuming": True,
        "seconds_since_poll": 0.5,
        "seconds_since_message": None,
    }
    values.update(overrides)
    return SubscriberHealth(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("service", "ready", "problem"),
    [
        (ServiceHealth("risk", True, True, True, (subscriber(),)), True, None),
        (ServiceHealth("risk", False, False, None), False, "not started"),
        (ServiceHealth("risk", True, False, None, (subscriber(),)), False, "Kafka broker not reachable"),
        (ServiceHealth("risk", True, True, False, (subscriber(),)), False, "Redis not reachable"),
        (ServiceHealth("risk", True, True, None, (subscriber(partitions=()),)), False, "no partitions"),
        (ServiceHealth("risk", True, True, None, (subscriber(consuming=False),)), False, "not running"),
        (
            ServiceHealth("risk", True, True, None, (subscriber(seconds_since_poll=400.0),)),
            False,
            "no poll for 400s",
        ),
    ],
)
def test_readiness_rules(service: ServiceHealth, ready: bool, problem: str | None) -> None:
    assert service.ready is ready
    if problem is not None:
        assert any(problem in p for p in service.problems), service.problems


def test_a_stopping_process_is_not_ready_but_still_live() -> None:
    report = HealthReport((ServiceHealth("risk", True, True, None, (subscriber(),)),), stopping=True)
    assert report.live
    assert not report.ready


def test_a_dead_consume_loop_is_not_live() -> None:
    report = HealthReport((ServiceHealth("risk", True, True, None, (subscriber(consuming=False),)),))
    assert not report.live


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower()
    return status, json.loads(body)


async def test_http_endpoints_report_live_and_ready_with_status_codes() -> None:
    events: list[str] = []
    app = recording_app("feed", events)
    orchestrator = ServiceOrchestrator(app, health_port=0)
    async with in_memory(app):
        await orchestrator.start()
        try:
            port = orchestrator.health_port
            status, live = await http_get(port, "/health/live")
            assert status == 200
            assert live["live"] is True
            # In memory there is no consumer: no partitions, so the app is not ready, and says why.
            status, ready = await http_get(port, "/health/ready")
            assert status == 503
            services = ready["services"]
            assert isinstance(services, list)
            assert services[0]["name"] == "app-1"
            assert any("no partitions assigned" in p for p in services[0]["problems"])
            assert (await http_get(port, "/nope"))[0] == 404
            assert (await http_get(port, "/health/live", method="POST"))[0] == 405
        finally:
            await orchestrator.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
