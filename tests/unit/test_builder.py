"""StreamServiceBuilder: validation messages, any call order, handler shapes (in-memory broker)."""

from __future__ import annotations

from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from faststream import TestApp
from faststream.kafka import TestKafkaBroker
from pydantic import BaseModel
from redis.asyncio import Redis

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import ConfigError
from alpha_streaming._ids import child_id
from alpha_streaming._services.builder import StreamServiceBuilder
from alpha_streaming._services.handlers import HandlerKind, inspect_handler
from alpha_streaming._services.service import CurrentProducer, StreamService
from alpha_streaming._settings import DedupSettings, RedpandaSettings, Settings
from alpha_streaming._topics import BrokerContext
from middlewares._envelope import CurrentBrokerContext, CurrentEnvelope
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._tier import AUTO_COMMIT_EVERY

NO_DEDUP = Settings(dedup=DedupSettings(enabled=False))
CONFIG = RedpandaSettings(bootstrap_servers="127.0.0.1:9092")


class Signal(BaseModel):
    strategy: str
    token: int


async def legacy(message: dict[str, Any], topic: str) -> None:
    return None


async def typed(signal: Signal, envelope: CurrentEnvelope, ctx: CurrentBrokerContext) -> None:
    return None


async def typed_with_producer(signal: Signal, out: CurrentProducer) -> None:
    return None


def builder(settings: Settings = NO_DEDUP) -> StreamServiceBuilder:
    return StreamServiceBuilder("risk-manager", CONFIG, settings)


def build_error(b: StreamServiceBuilder) -> str:
    with pytest.raises(ConfigError) as caught:
        b.build()
    return str(caught.value)


def test_dedup_without_redis_says_to_call_with_redis_or_disable_it() -> None:
    message = build_error(
        builder(Settings()).add_consumer_handler(
            topics=["paper.signals.raw"], group_id="g", handler_func=legacy
        )
    )
    assert "with_redis(" in message
    assert "ALPHA_DEDUP__ENABLED=false" in message


def test_every_problem_is_reported_at_once_with_what_to_change() -> None:
    def not_async(message: dict[str, Any], topic: str) -> None:
        return None

    async def three_args(a: dict[str, Any], b: str, c: int) -> None:
        return None

    message = build_error(
        builder()
        .add_consumer_handler(topics=[], group_id="a", handler_func=legacy)
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="b", handler_func=not_async)
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="b", handler_func=three_args)
        .add_consumer_handler(topics=["bad name"], group_id="", handler_func=legacy)
        .add_consumer_handler(topics=["x.y", "x.y"], group_id="d", handler_func=typed_with_producer)
    )
    lines = message.splitlines()[1:]
    assert len(lines) == 8, message
    assert "#1" in lines[0] and "topics is empty" in lines[0]
    assert "#2" in lines[1] and "must be an `async def`" in lines[1]
    assert "#3" in lines[2] and "already used by add_consumer_handler #2" in lines[2]
    assert "#3" in lines[3] and "unsupported signature" in lines[3]
    assert "#4" in lines[4] and "invalid topic name(s) ['bad name']" in lines[4]
    assert "#4" in lines[5] and "group_id must be a non-empty string" in lines[5]
    assert "#5" in lines[6] and "listed twice" in lines[6]
    assert "takes CurrentProducer" in lines[7] and ".add_producer()" in lines[7]


def test_a_service_that_does_nothing_is_refused() -> None:
    assert "add_consumer_handler(...) and/or add_producer()" in build_error(builder())


@pytest.mark.parametrize(
    ("func", "kind"),
    [(legacy, HandlerKind.LEGACY), (typed, HandlerKind.TYPED), (typed_with_producer, HandlerKind.TYPED)],
)
def test_handler_shapes_are_recognised(func: Any, kind: HandlerKind) -> None:
    assert inspect_handler(func).kind is kind


async def untyped_legacy(message, topic):  # type: ignore[no-untyped-def]
    return None


async def typed_with_plain_extra(signal: Signal, other: int) -> None:
    return None


def test_unannotated_legacy_handler_is_legacy_and_plain_extra_parameters_are_refused() -> None:
    assert inspect_handler(untyped_legacy).kind is HandlerKind.LEGACY
    with pytest.raises(ConfigError, match="other are neither injected nor defaulted"):
        inspect_handler(typed_with_plain_extra)


def in_any_order(order: str, redis: Any) -> StreamService:
    b = builder(Settings())
    steps = {
        "r": lambda: b.with_redis(redis),
        "e": lambda: b.with_error_handling(),
        "p": lambda: b.add_producer(topics=["paper.signals.validated"]),
        "c": lambda: b.add_consumer_handler(
            topics=["paper.signals.raw"], group_id="risk", handler_func=typed_with_producer
        ),
    }
    for step in order:
        steps[step]()
    return b.build()


@pytest.mark.parametrize("order", ["repc", "crpe", "pcer"])
def test_calls_may_come_in_any_order(order: str) -> None:
    from redis.asyncio import Redis

    service = in_any_order(order, Redis())
    assert service.topics == ("paper.signals.raw", "paper.signals.validated")
    assert service.name == "risk-manager"
    assert service.redis is not None


async def test_legacy_and_typed_handlers_see_their_event_and_broker_context() -> None:
    seen: list[tuple[str, Any, Any]] = []

    async def legacy_handler(message: dict[str, Any], topic: str) -> None:
        seen.append(("legacy", message, topic))

    async def typed_handler(signal: Signal, envelope: CurrentEnvelope, ctx: CurrentBrokerContext) -> None:
        seen.append(("typed", (signal, envelope), ctx))

    service = (
        builder()
        .add_consumer_handler(topics=["market.ticks"], group_id="legacy", handler_func=legacy_handler)
        .add_consumer_handler(
            topics=["paper.signals.raw", "zerodha.signals.raw"], group_id="typed", handler_func=typed_handler
        )
        .build()
    )
    tick = EventEnvelope.create(type="Tick", data={"token": 1}, source="feed")
    paper = EventEnvelope.create(
        type="Signal", data={"strategy": "s", "token": 2}, source="strat", broker="paper"
    )
    zerodha = EventEnvelope.create(
        type="Signal", data={"strategy": "z", "token": 3}, source="strat", broker="zerodha"
    )
    async with TestKafkaBroker(service.broker) as br:
        await br.publish(tick.to_bytes(), "market.ticks", headers=tick.headers())
        await br.publish(paper.to_bytes(), "paper.signals.raw", headers=paper.headers())
        await br.publish(zerodha.to_bytes(), "zerodha.signals.raw", headers=zerodha.headers())

    assert seen[0] == ("legacy", tick.model_dump(mode="json"), "market.ticks")
    assert seen[1][1] == (Signal(strategy="s", token=2), paper)
    assert isinstance(seen[1][2], BrokerContext)
    assert (seen[1][2].broker, seen[1][2].topic, seen[1][2].group_id) == (
        "paper",
        "paper.signals.raw",
        "typed",
    )
    assert seen[2][1] == (Signal(strategy="z", token=3), zerodha)
    assert (seen[2][2].broker, seen[2][2].topic) == ("zerodha", "zerodha.signals.raw")


async def test_a_handler_publishes_a_child_event_through_the_injected_producer() -> None:
    async def handler(signal: Signal, out: CurrentProducer) -> None:
        await out.send(topic="paper.signals.validated", value=signal, key=f"{signal.strategy}:{signal.token}")

    service = (
        builder()
        .add_producer(topics=["paper.signals.validated"])
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="risk", handler_func=handler)
        .build()
    )
    children: list[EventEnvelope] = []

    # A second subscriber on the same broker reads the child back through the same stack.
    @service.broker.subscriber("paper.signals.validated", group_id="probe")
    async def probe(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        children.append(envelope)

    parent = EventEnvelope.create(type="Signal", data={"strategy": "s", "token": 7}, source="strat")
    async with TestKafkaBroker(service.broker) as br:
        await br.publish(parent.to_bytes(), "paper.signals.raw", headers=parent.headers())
    [child] = children
    assert child.type == "Signal"
    assert child.source == "risk-manager"
    assert child.broker == "paper"
    assert child.correlation_id == parent.correlation_id
    assert child.causation_id == parent.id
    assert child.key == "s:7"
    assert child.data == {"strategy": "s", "token": 7}
    assert child.id == str(child_id(parent.id, "paper.signals.validated", 0)), "the same on a re-run"


async def test_an_explicit_event_id_given_to_the_producer_wins() -> None:
    async def handler(signal: Signal, out: CurrentProducer) -> None:
        await out.send(topic="paper.signals.validated", value=signal, event_id="chosen-by-caller")

    service = (
        builder()
        .add_producer(topics=["paper.signals.validated"])
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="risk", handler_func=handler)
        .build()
    )
    ids: list[str] = []

    @service.broker.subscriber("paper.signals.validated", group_id="probe")
    async def probe(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        ids.append(envelope.id)

    parent = EventEnvelope.create(type="Signal", data={"strategy": "s", "token": 7}, source="strat")
    async with TestKafkaBroker(service.broker) as br:
        await br.publish(parent.to_bytes(), "paper.signals.raw", headers=parent.headers())
    assert ids == ["chosen-by-caller"]


def test_producer_is_refused_with_a_fix_when_not_added() -> None:
    service = builder().add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=legacy).build()
    with pytest.raises(ConfigError, match=r"call \.add_producer\(\)"):
        _ = service.producer


def test_metrics_only_with_with_metrics_and_error_routing_always() -> None:
    from middlewares._error_routing import ErrorRoutingMiddleware
    from middlewares._metrics import MetricsMiddleware

    def kinds(service: StreamService) -> list[type]:
        return [type(m) for m in service.broker.middlewares]

    plain = builder().add_producer().build()
    assert MetricsMiddleware not in kinds(plain)
    assert ErrorRoutingMiddleware in kinds(plain)
    measured = builder().with_error_handling().add_producer().with_metrics().build()
    assert MetricsMiddleware in kinds(measured)
    assert ErrorRoutingMiddleware in kinds(measured)


def test_consumer_settings_reach_the_subscribers_and_the_commit_window() -> None:
    from redis.asyncio import Redis

    from alpha_streaming._settings import ConsumerSettings
    from middlewares._error_routing import ErrorRoutingMiddleware

    poll = ConsumerSettings(
        max_poll_interval_ms=4_000,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        max_poll_records=50,
        commit_every=100,
        commit_interval_s=0.2,
    )
    service = (
        StreamServiceBuilder("risk-manager", CONFIG, Settings(consumer=poll))
        .with_redis(Redis())  # never connected: build() only wires
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=legacy)
        .build()
    )
    (subscriber,) = service.broker.subscribers
    args = subscriber._connection_args  # type: ignore[attr-defined]
    assert (args["max_poll_interval_ms"], args["session_timeout_ms"]) == (4_000, 6_000)
    assert (args["heartbeat_interval_ms"], args["max_poll_records"]) == (1_000, 50)
    (routing,) = [m for m in service.broker.middlewares if isinstance(m, ErrorRoutingMiddleware)]
    assert (routing.commit_every, routing.commit_interval_s) == (100, 0.2)


def test_background_commits_without_dedup_are_accepted_at_build() -> None:
    # Kafka's own at-least-once: a crash repeats what finished since the last commit.
    from alpha_streaming._settings import ConsumerSettings

    settings = Settings(dedup=DedupSettings(enabled=False), consumer=ConsumerSettings(commit_every=50))
    service = (
        StreamServiceBuilder("risk-manager", CONFIG, settings)
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=legacy)
        .build()
    )
    (routing,) = [m for m in service.broker.middlewares if isinstance(m, ErrorRoutingMiddleware)]
    assert routing.commit_every == 50


def test_heartbeat_must_be_below_session_timeout() -> None:
    from alpha_streaming._settings import ConsumerSettings

    with pytest.raises(ValueError, match="heartbeat_interval_ms=10000 must be below"):
        ConsumerSettings(heartbeat_interval_ms=10_000, session_timeout_ms=10_000)


async def test_commits_go_out_in_the_background_and_every_subscriber_commits_on_revoke() -> None:
    def built(b: StreamServiceBuilder) -> StreamService:
        return (
            b.add_consumer_handler(topics=["a.b.c"], group_id="g1", handler_func=legacy)
            .add_consumer_handler(topics=["d.e.f"], group_id="g2", handler_func=legacy)
            .build()
        )

    def routing_of(service: StreamService) -> ErrorRoutingMiddleware:
        (routing,) = [m for m in service.broker.middlewares if isinstance(m, ErrorRoutingMiddleware)]
        return routing

    service = built(builder(Settings()).with_redis(Redis()))  # never connected: nothing here reaches it
    routing = routing_of(service)
    assert routing.commit_every == AUTO_COMMIT_EVERY
    assert routing_of(built(builder())).commit_every == AUTO_COMMIT_EVERY, "without dedup too"

    async with TestKafkaBroker(service.broker), TestApp(service.app):
        # The listeners are given at startup; the in-memory broker starts no consumer and has no
        # rebalance, so each subscriber's listener is called here as aiokafka would call it.
        for subscriber in service.broker.subscribers:
            (topic,) = subscriber.topic_names  # type: ignore[attr-defined]
            partition = TopicPartition(topic, 0)
            consumer = MagicMock(commit=AsyncMock(), assignment=MagicMock(return_value={partition}))
            record = ConsumerRecord(topic, 0, 4, 0, 0, None, b"{}", None, 0, 2, [])
            await _finished(routing.commits, consumer, (record,))  # an outcome waiting in the window
            consumer.commit.assert_not_called()
            await subscriber._listener.on_partitions_revoked({partition})  # type: ignore[attr-defined]
            consumer.commit.assert_awaited_once_with({partition: 5})


async def _finished(commits: Any, consumer: Any, records: tuple[Any, ...]) -> None:
    """One outcome as error routing reports it: the records taken in flight, then finished."""
    await commits.finish(commits.begin(consumer, records))


def test_faststreams_access_lines_are_debug_unless_the_settings_raise_them() -> None:
    import logging

    from alpha_streaming._settings import LogSettings

    def access_level(settings: Settings) -> int:
        service = (
            StreamServiceBuilder("risk-manager", CONFIG, settings)
            .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=legacy)
            .build()
        )
        level: int = service.broker.config.logger.log_level
        return level

    quiet = Settings(dedup=DedupSettings(enabled=False), log=LogSettings(configure=False))
    loud = Settings(dedup=DedupSettings(enabled=False), log=LogSettings(configure=False, access_level="INFO"))
    assert (access_level(quiet), access_level(loud)) == (logging.DEBUG, logging.INFO)
