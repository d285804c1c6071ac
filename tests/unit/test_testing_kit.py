"""`alpha_streaming.testing`: the in-memory kit runs the enhanced tier as it is, and puts it all back.

What it reports is read from the tier's own state (outcome, attempts, retries); dedup runs its Lua
scripts on fakeredis; DLQ records come from the production builder. That these outcomes are the
ones real Kafka and Redis give is tests/integration/test_testing_kit_faithful.py's job.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel
from redis.asyncio import Redis

from alpha_streaming import (
    ConfigError,
    CurrentProducer,
    DeadLetter,
    DlqHeaders,
    EnvelopeError,
    EventEnvelope,
    OutputPublishError,
    Settings,
    StreamServiceBuilder,
    TransientError,
    child_id,
)
from alpha_streaming.testing import Delivery, Record, TestStreamService
from middlewares import Budget, CurrentEnvelopes, DeduplicationMiddleware, EnhancedTier, RetryPolicy
from tests.unit.test_public_api import fresh_interpreter

IN, OUT, GROUP, SERVICE = "paper.orders.in", "paper.orders.out", "orders", "kit-test"


class Order(BaseModel):
    kind: str
    n: int


def decorator_app(
    policy: RetryPolicy | None = None, redis: Redis | None = None
) -> tuple[EnhancedTier, FastStream, dict[str, int]]:
    """A decorator-style service: one subscriber returning a child; "flaky" fails twice first."""
    tier = EnhancedTier(SERVICE, redis=redis or Redis(), metrics=False, policy=policy)
    broker = tier.broker()
    runs: dict[str, int] = {}

    @broker.subscriber(IN, group_id=GROUP)
    @broker.publisher(OUT)
    async def handle(order: Order) -> dict[str, Any]:
        runs[order.kind] = runs.get(order.kind, 0) + 1
        if order.kind.startswith("flaky") and runs[order.kind] <= 2:
            raise TransientError("venue timeout")
        return {"n": order.n * 10}

    return tier, tier.install(FastStream(broker)), runs


async def test_a_processed_event_publishes_a_child_with_lineage_and_a_deterministic_id() -> None:
    _, app, runs = decorator_app()
    async with TestStreamService(app) as t:
        delivery = await t.publish(IN, {"kind": "ok", "n": 1}, key="k1", event_id="e-1")
        [child] = t.published(OUT)
        [record] = t.records(OUT)
    assert (delivery.status, delivery.attempts, delivery.retries) == ("processed", 1, 0)
    assert delivery.envelope is not None and delivery.envelope.id == "e-1"
    assert (delivery.topic, delivery.partition, delivery.offset, delivery.group_id) == (IN, 0, 0, GROUP)
    assert child.id == str(child_id("e-1", OUT, 0))
    assert (child.causation_id, child.correlation_id, child.source, child.data) == (
        "e-1",
        "e-1",
        SERVICE,
        {"n": 10},
    )
    assert record.header("x-event-id") == child.id.encode()
    assert record.header("content-type") == b"application/json"
    assert runs == {"ok": 1}


async def test_the_same_event_twice_runs_the_handler_once() -> None:
    tier, app, runs = decorator_app()
    assert tier.dedup is not None
    async with TestStreamService(app) as t:
        first = await t.publish(IN, {"kind": "ok", "n": 1}, event_id="e-1")
        again = await t.publish(IN, {"kind": "ok", "n": 1}, event_id="e-1")
        marker = await tier.dedup.marker(GROUP, "e-1")  # read from the in-memory Redis
        assert len(t.published(OUT)) == 1
    assert (first.status, again.status, again.attempts) == ("processed", "deduplicated", 1)
    assert (again.offset, runs) == (1, {"ok": 1})
    assert marker == "done", "the done marker the Lua script writes"


async def test_a_transient_failure_is_retried_on_the_policys_schedule_without_waiting() -> None:
    budget = Budget(max_attempts=5, base_delay_s=2.0, max_delay_s=30.0)
    policy = RetryPolicy(default=budget, rules={}, rng=random.Random(7))
    expected = RetryPolicy(default=budget, rules={}, rng=random.Random(7))
    _, app, runs = decorator_app(policy)
    started = time.perf_counter()
    async with TestStreamService(app) as t:
        delivery = await t.publish(IN, {"kind": "flaky", "n": 2}, event_id="e-2")
        assert t.retry_delays == delivery.retry_delays
    assert time.perf_counter() - started < 1.0, "the 2 s + 4 s backoff was recorded, not waited"
    assert (delivery.status, delivery.attempts, delivery.retries) == ("processed", 3, 2)
    assert delivery.retry_delays == (expected.delay_s(budget, 1), expected.delay_s(budget, 2))
    assert isinstance(delivery.error, TransientError)
    assert runs == {"flaky": 3}


async def test_exhausted_retries_are_dead_lettered_with_the_attempts() -> None:
    policy = RetryPolicy(default=Budget(max_attempts=2, base_delay_s=1.0, max_delay_s=1.0), rules={})
    _, app, _ = decorator_app(policy)
    async with TestStreamService(app) as t:
        delivery = await t.publish(IN, {"kind": "flaky-forever", "n": 3}, key="k3", event_id="e-3")
        [letter] = t.dead_letters(IN)
    assert (delivery.status, delivery.attempts) == ("dead_lettered", 2)
    assert letter.dead_letter.attempts == 2
    assert letter.dead_letter.exception_fqcn == "alpha_streaming._errors.TransientError"
    assert letter.key == b"k3"
    assert EventEnvelope.from_bytes(letter.value or b"").id == "e-3"


async def test_poison_bytes_are_dead_lettered_with_key_bytes_and_headers_as_production_writes_them() -> None:
    _, app, runs = decorator_app()
    async with TestStreamService(app) as t:
        await t.publish(IN, {"kind": "ok", "n": 1})
        delivery = await t.publish(IN, b"\x00not json", key=b"kp", headers={"trace": "t-1"})
        [letter] = t.dead_letters(IN)
        assert t.dead_letters(f"{IN}.dlq") == [letter]
    assert (delivery.status, delivery.attempts, delivery.envelope) == ("dead_lettered", 1, None)
    assert isinstance(delivery.error, EnvelopeError)
    assert (letter.topic, letter.partition, letter.key, letter.value) == (
        f"{IN}.dlq",
        0,
        b"kp",
        b"\x00not json",
    )
    assert letter.headers[0] == ("trace", b"t-1"), "the original headers come first, untouched"
    error = DeadLetter.from_headers(letter.headers)
    assert (error.original_topic, error.original_partition, error.original_offset) == (IN, 0, 1)
    assert (error.consumer_group, error.service, error.attempts) == (GROUP, SERVICE, 1)
    assert error.exception_fqcn == "alpha_streaming._errors.EnvelopeError"
    assert letter.header(DlqHeaders.EXCEPTION_STACKTRACE)
    assert runs == {"ok": 1}


async def test_an_invalid_payload_is_dead_lettered_at_once() -> None:
    _, app, runs = decorator_app()
    async with TestStreamService(app) as t:
        delivery = await t.publish(IN, {"kind": "ok", "n": "many"}, event_id="e-4")
        [letter] = t.dead_letters(IN)
    assert (delivery.status, delivery.attempts) == ("dead_lettered", 1)
    assert letter.dead_letter.exception_fqcn == "pydantic_core._pydantic_core.ValidationError"
    assert runs == {}


async def test_a_refused_output_is_retried_and_written_once() -> None:
    policy = RetryPolicy(default=Budget(max_attempts=3, base_delay_s=0.5, max_delay_s=0.5), rules={})
    _, app, runs = decorator_app(policy)
    async with TestStreamService(app) as t:
        t.refuse(OUT)
        delivery = await t.publish(IN, {"kind": "ok", "n": 5}, event_id="e-5")
        [child] = t.published(OUT)
    assert (delivery.status, delivery.attempts) == ("processed", 2)
    assert isinstance(delivery.error, OutputPublishError)
    assert child.id == str(child_id("e-5", OUT, 0)), "the re-run sends the same child id"
    assert runs == {"ok": 2}


async def test_a_refused_dead_letter_write_leaves_the_event_for_redelivery() -> None:
    _, app, _ = decorator_app(RetryPolicy(redelivery_delay_s=5.0))
    async with TestStreamService(app) as t:
        t.refuse(f"{IN}.dlq")
        delivery = await t.publish(IN, b"poison")
        assert t.dead_letters(IN) == []
        assert t.retry_delays == (5.0,), "the redelivery pause, recorded"
    assert delivery.status == "redeliver"


class Signal(BaseModel):
    strategy: str
    token: int


def built_service(redis: Redis) -> Any:
    async def legacy(message: dict[str, Any], topic: str) -> None:
        seen.append((message["id"], topic))

    async def typed(signal: Signal, out: CurrentProducer) -> None:
        await out.send(topic="paper.signals.validated", value=signal, key=f"{signal.strategy}:{signal.token}")

    seen: list[tuple[str, str]] = []
    service = (
        StreamServiceBuilder("risk-kit", settings=Settings())
        .with_redis(redis)
        .add_producer(topics=["paper.signals.validated"])
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="typed", handler_func=typed)
        .add_consumer_handler(topics=["market.ticks"], group_id="legacy", handler_func=legacy)
        .build()
    )
    return service, seen


async def test_a_builder_service_runs_with_its_producer_and_legacy_handlers() -> None:
    service, seen = built_service(Redis())
    async with TestStreamService(service) as t:
        tick = await t.publish("market.ticks", {"token": 1}, event_id="tick-1")
        signal = await t.publish("paper.signals.raw", Signal(strategy="s", token=7), event_id="sig-1")
        [child] = t.published("paper.signals.validated")
        [record] = t.records("paper.signals.validated")
    assert (tick.status, signal.status) == ("processed", "processed")
    assert seen == [("tick-1", "market.ticks")]
    assert signal.envelope is not None and signal.envelope.type == "Signal"
    assert child.id == str(child_id("sig-1", "paper.signals.validated", 0))
    assert (child.causation_id, child.key, record.key) == ("sig-1", "s:7", b"s:7")


async def test_data_seeded_in_a_fakeredis_client_of_the_service_stays_visible() -> None:
    from fakeredis import FakeAsyncRedis

    redis = FakeAsyncRedis()
    await redis.set("reference", "kept")
    service, _ = built_service(redis)
    async with TestStreamService(service) as t:
        assert await t.redis.get("reference") == b"kept"
        await t.publish("market.ticks", {"token": 1}, event_id="tick-1")
    # The builder's dedup namespace is the service name; the done marker is on the seeded server.
    assert await DeduplicationMiddleware(redis, namespace="risk-kit").marker("legacy", "tick-1") == "done"
    await redis.aclose()


async def test_two_services_run_together_and_one_feeds_the_other() -> None:
    _, upstream, _ = decorator_app()
    tier = EnhancedTier("downstream", redis=Redis(), metrics=False)
    broker = tier.broker()
    got: list[int] = []

    @broker.subscriber(OUT, group_id="downstream")
    async def collect(body: dict[str, Any]) -> None:
        got.append(body["n"])

    async with TestStreamService(upstream, broker) as t:
        await t.publish(IN, {"kind": "ok", "n": 4})
    assert got == [40]


async def test_everything_the_kit_changed_is_put_back_on_exit() -> None:
    redis = Redis()
    tier, app, _ = decorator_app(redis=redis)
    assert tier.dedup is not None
    before = (tier.routing.policy, tier.routing.dead_letter, app.broker.middlewares, redis.connection_pool)
    tier.dedup.cache.add(tier.dedup.key_prefix(GROUP) + "e-1")  # remembered from an earlier test
    async with TestStreamService(app) as t:
        assert (await t.publish(IN, {"kind": "ok", "n": 1}, event_id="e-1")).status == "processed"
    after = (tier.routing.policy, tier.routing.dead_letter, app.broker.middlewares, redis.connection_pool)
    assert after == before
    assert after[0] is before[0] and after[1] is before[1] and after[3] is before[3]
    await redis.aclose()


async def test_wiring_mistakes_are_named() -> None:
    _, app, _ = decorator_app()
    with pytest.raises(ConfigError, match="carries no EnhancedTier"):
        await TestStreamService(KafkaBroker()).__aenter__()
    tier = EnhancedTier("acks", metrics=False)
    auto = tier.broker()
    auto.subscriber(IN, group_id="g", ack_policy=AckPolicy.ACK_FIRST)(lambda body: None)
    with pytest.raises(ConfigError, match=r"AckPolicy\.MANUAL"):
        await TestStreamService(auto).__aenter__()
    async with TestStreamService(app) as t:
        with pytest.raises(ConfigError, match=r"no subscriber consumes 'paper\.nothing'"):
            await t.publish("paper.nothing", {})
        with pytest.raises(TypeError, match="event_id"):
            await t.publish(IN, b"raw", event_id="x")
    with pytest.raises(RuntimeError, match="inside `async with"):
        await t.publish(IN, {})


async def test_several_groups_on_a_topic_need_a_group_to_answer_for() -> None:
    _, app, _ = decorator_app()

    @app.broker.subscriber(IN, group_id="audit")
    async def audit(body: dict[str, Any]) -> None:
        return None

    async with TestStreamService(app) as t:
        with pytest.raises(ConfigError, match="several consumer groups"):
            await t.publish(IN, {"kind": "ok", "n": 1})
        delivery = await t.publish(IN, {"kind": "ok", "n": 1}, event_id="e-6", group="audit")
        assert len(t.published(OUT)) == 1, "every group got the record"
    assert (delivery.group_id, delivery.status) == ("audit", "processed")


def test_the_public_names_and_that_import_alpha_streaming_loads_none_of_it() -> None:
    import alpha_streaming.testing as testing

    assert testing.__all__ == ("SOURCE", "Delivery", "Record", "TestStreamService")
    assert {Delivery.__module__, Record.__module__, TestStreamService.__module__} <= {
        "alpha_streaming._testing.probe",
        "alpha_streaming._testing.wire",
        "alpha_streaming._testing.kit",
    }
    loaded = fresh_interpreter(
        """
        import json, sys
        import alpha_streaming
        from alpha_streaming import StreamServiceBuilder
        kit = ("fakeredis", "lupa", "alpha_streaming._testing", "alpha_streaming.testing")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(kit))))
        """
    )
    assert loaded == []


async def test_a_batch_subscriber_gets_each_record_as_a_batch_of_one() -> None:
    tier = EnhancedTier("kit-batch", redis=Redis(), metrics=False)
    broker = tier.broker()
    seen: list[list[str]] = []

    @broker.subscriber(IN, group_id="batches", batch=True)
    async def handle(bodies: list[dict[str, Any]], envelopes: CurrentEnvelopes) -> None:
        seen.append([envelope.id for envelope in envelopes])

    async with TestStreamService(broker) as t:
        first = await t.publish(IN, {"n": 1}, event_id="b-1")
        again = await t.publish(IN, {"n": 1}, event_id="b-1")
        poison = await t.publish(IN, b"junk")
        assert len(t.dead_letters(IN)) == 1
    assert (first.status, again.status, poison.status) == ("processed", "deduplicated", "dead_lettered")
    assert seen == [["b-1"]]
