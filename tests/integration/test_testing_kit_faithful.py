"""The test kit is faithful: one scenario table, run in memory and on the real Kafka and Redis.

The same service (decorator style, the whole enhanced tier with dedup) consumes the same records
(the same envelopes, written by the project's producer) on both paths. Compared, per scenario:
outcome, attempts and retries; the retry schedule (same policy, same seed); every DLQ record's
partition, key, value bytes and headers (all but the three that carry a time or a stack: the
failure time, the source record's timestamp and the stack trace); every output record's key and
headers and its envelope (all but `ts`); and what dedup remembers of each event (done or nothing).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming import DlqHeaders, EventEnvelope, RedpandaProducer, RedpandaSettings, TransientError
from alpha_streaming.testing import TestStreamService
from middlewares import Budget, EnhancedTier, RetryPolicy
from tests.support import Spy, eventually, read_topic, shut_down

NewTopic = Callable[..., Awaitable[str]]
FAST = Budget(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
VOLATILE = {DlqHeaders.FAILED_AT, DlqHeaders.ORIGINAL_TIMESTAMP, DlqHeaders.EXCEPTION_STACKTRACE}


class Order(BaseModel):
    kind: str
    n: int


@dataclass(frozen=True)
class Scenario:
    name: str
    value: EventEnvelope | bytes
    key: str


def order(kind: str, n: Any, key: str) -> EventEnvelope:
    return EventEnvelope.create(
        type="order", data={"kind": kind, "n": n}, source="upstream", key=key, broker="paper"
    )


def table() -> list[Scenario]:
    ok = order("ok", 1, "k1")
    return [
        Scenario("processed, with an output", ok, "k1"),
        Scenario("duplicate", ok, "k1"),
        Scenario("transient x2, then processed", order("flaky", 2, "k2"), "k2"),
        Scenario("poison bytes", b"\x00not an envelope", "kp"),
        Scenario("invalid payload", order("ok", "many", "k3"), "k3"),
        Scenario("transient until the budget is spent", order("flaky-forever", 4, "k4"), "k4"),
    ]


@dataclass
class Run:
    outcomes: list[tuple[str, int, int]]
    delays: list[float]
    dead_letters: list[tuple[int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]]
    outputs: list[tuple[bytes | None, list[tuple[str, bytes]], dict[str, Any]]]
    dedup: dict[str, str | None]


def service(
    redis: aioredis.Redis, namespace: str, source: str, out: str, sleep: Any, *outer: Any, **broker: Any
) -> tuple[EnhancedTier, KafkaBroker]:
    policy = RetryPolicy(rng=random.Random(5), sleep=sleep, redelivery_delay_s=0.2).with_rule(
        TransientError, FAST
    )
    tier = EnhancedTier("kit-faithful", redis=redis, metrics=False, policy=policy, dedup_namespace=namespace)
    kafka = tier.broker(outer=outer, **broker)
    runs: dict[str, int] = {}

    @kafka.subscriber(source, group_id=f"{namespace}.orders", auto_offset_reset="earliest")
    @kafka.publisher(out)
    async def handle(order: Order) -> dict[str, Any]:
        runs[order.kind] = runs.get(order.kind, 0) + 1
        if order.kind == "flaky-forever" or (order.kind == "flaky" and runs[order.kind] <= 2):
            raise TransientError(f"venue timeout on run {runs[order.kind]}")
        return {"n": order.n * 10}

    return tier, kafka


def dlq_view(
    records: list[Any],
) -> list[tuple[int | None, bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    return [
        (r.partition, r.key, r.value, [(k, v) for k, v in r.headers if k not in VOLATILE]) for r in records
    ]


def output_view(records: list[Any]) -> list[tuple[bytes | None, list[tuple[str, bytes]], dict[str, Any]]]:
    return [
        (r.key, list(r.headers), EventEnvelope.from_bytes(r.value).model_dump(mode="json", exclude={"ts"}))
        for r in records
    ]


async def dedup_markers(
    tier: EnhancedTier, namespace: str, scenarios: list[Scenario]
) -> dict[str, str | None]:
    """What Redis remembers of each scenario's event (done, leased or nothing), by event id."""
    assert tier.dedup is not None
    ids = sorted({s.value.id for s in scenarios if isinstance(s.value, EventEnvelope)})
    return {event_id: await tier.dedup.marker(f"{namespace}.orders", event_id) for event_id in ids}


async def in_memory(scenarios: list[Scenario], namespace: str, source: str, out: str) -> Run:
    tier, kafka = service(aioredis.Redis(), namespace, source, out, asyncio.sleep)
    async with TestStreamService(kafka) as t:
        deliveries = [await t.publish(source, s.value, key=s.key) for s in scenarios]
        return Run(
            outcomes=[(str(d.status), d.attempts, d.retries) for d in deliveries],
            delays=list(t.retry_delays),
            dead_letters=dlq_view(t.dead_letters(source)),
            outputs=output_view(t.records(out)),
            dedup=await dedup_markers(tier, namespace, scenarios),
        )


async def on_kafka(
    scenarios: list[Scenario], bootstrap: str, redis: aioredis.Redis, namespace: str, source: str, out: str
) -> Run:
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(delay)

    spy = Spy()
    config = RedpandaSettings(bootstrap_servers=bootstrap)
    async with RedpandaProducer(config) as producer:
        for s in scenarios:
            await producer.send(topic=source, key=s.key, value=s.value)
    tier, kafka = service(redis, namespace, source, out, sleep, spy, config=config)
    await kafka.start()
    try:
        await eventually(lambda: spy.finished == len(scenarios), "every scenario to finish")
        letters: list[ConsumerRecord[bytes, bytes]] = await read_topic(bootstrap, f"{source}.dlq", 3)
        outputs = await read_topic(bootstrap, out, 2)
    finally:
        await shut_down(tier, kafka)
    return Run(
        outcomes=[(str(s.outcome), s.attempts, s.retries) for s in spy.states],
        delays=delays,
        dead_letters=dlq_view(letters),
        outputs=output_view(outputs),
        dedup=await dedup_markers(tier, namespace, scenarios),
    )


async def test_the_scenario_table_ends_the_same_in_memory_and_on_kafka_and_redis(
    kafka_bootstrap: str, redis_client: aioredis.Redis, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    source, out = await new_topic(prefix="paper.kit"), await new_topic(prefix="paper.kitout")
    await new_topic(name=f"{source}.dlq")  # one partition, like the source; deleted afterwards
    namespace = unique("kit")

    scenarios = table()  # the same envelopes (ids, timestamps) on both paths
    memory = await in_memory(scenarios, namespace, source, out)
    real = await on_kafka(scenarios, kafka_bootstrap, redis_client, namespace, source, out)

    names = [s.name for s in scenarios]
    print("\nscenario | in memory | on Kafka + Redis (status, attempts, retries)")
    for name, kit, kafka in zip(names, memory.outcomes, real.outcomes, strict=True):
        print(f"{name} | {kit} | {kafka}")
    assert memory.outcomes == [
        ("processed", 1, 0),
        ("deduplicated", 1, 0),
        ("processed", 3, 2),
        ("dead_lettered", 1, 0),
        ("dead_lettered", 1, 0),
        ("dead_lettered", 3, 2),
    ]
    assert real.outcomes == memory.outcomes
    assert real.delays == memory.delays and len(memory.delays) == 4
    assert len(memory.dead_letters) == 3
    assert real.dead_letters == memory.dead_letters
    assert len(memory.outputs) == 2
    assert real.outputs == memory.outputs
    assert real.dedup == memory.dedup
    assert sorted(memory.dedup.values(), key=str) == [None, None, "done", "done"], (
        "the two processed events; the others released"
    )
