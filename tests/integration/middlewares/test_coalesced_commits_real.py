"""Background commits against the real Kafka and Redis: on partition revoke, after a DLQ write, at stop.

Both tests hold commits in a window that would not flush on its own during the test (1,000
outcomes, an hour), so any commit observed is the one the behaviour under test made. Each member
is wired as a user would: `tier.broker()` and `tier.install(FastStream(broker))`, which gives its
subscribers the revoke listener at startup and drains, stops and closes on `app.stop()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream

from alpha_streaming._errors import PermanentError
from alpha_streaming._settings import ConsumerSettings, RedpandaSettings
from middlewares._envelope import CurrentEnvelope
from middlewares._retry import RetryPolicy
from middlewares._tier import EnhancedTier
from tests.support import (
    Spy,
    committed_offsets,
    event,
    eventually,
    group_lag,
    lag_drains,
    read_topic,
    send,
)

NewTopic = Callable[..., Awaitable[str]]
SUBSCRIBE: dict[str, Any] = {"auto_offset_reset": "earliest"}
HELD = ConsumerSettings(commit_every=1_000, commit_interval_s=3_600.0)


def coalescing_tier(redis: aioredis.Redis, namespace: str) -> EnhancedTier:
    return EnhancedTier(
        "coalesce-it",
        redis=redis,
        dedup_namespace=namespace,
        metrics=False,
        policy=RetryPolicy(redelivery_delay_s=0.2),
        consumer=HELD,
    )


def recording(handled: list[tuple[str, str]], member: str) -> Callable[..., Awaitable[None]]:
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        handled.append((member, envelope.id))

    return handle


async def test_revoked_partitions_are_committed_at_the_rebalance_and_nothing_runs_twice(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=2, prefix="paper.coalesce")
    group, namespace = unique("g"), unique("ns")
    handled: list[tuple[str, str]] = []
    apps: dict[str, FastStream] = {}
    subscribers: dict[str, Any] = {}
    spy = Spy()
    for name in ("a", "b"):
        tier = coalescing_tier(redis_client, namespace)
        broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap), outer=(spy,))
        subscriber = subscribers[name] = broker.subscriber(topic, group_id=group, **SUBSCRIBE)
        subscriber(recording(handled, name))
        apps[name] = tier.install(FastStream(broker))

    first = [event(n) for n in range(10)]
    await send(kafka_bootstrap, topic, *((e, n % 2) for n, e in enumerate(first)))
    try:
        await apps["a"].start()
        await eventually(lambda: spy.finished == len(first), "consumer A to finish the first events")
        assert await committed_offsets(kafka_admin, group) == {}, "the window holds A's commits"

        await apps["b"].start()  # joins the group: A's partitions are revoked, then shared
        await eventually(
            lambda: len(subscribers["b"].consumer.assignment()) == 1, "the rebalance to give B a partition"
        )
        assert await committed_offsets(kafka_admin, group) == {0: 5, 1: 5}, "committed at revoke"

        later = [event(n) for n in range(10, 20)]
        await send(kafka_bootstrap, topic, *((e, n % 2) for n, e in enumerate(later)))
        await eventually(lambda: spy.finished == len(first) + len(later), "A and B to finish the rest")
    finally:
        for app in apps.values():
            await app.stop()  # drain, stop the broker, close

    ids = [event_id for _, event_id in handled]
    assert sorted(ids) == sorted(e.id for e in first + later), "every event ran exactly once"
    assert {name for name, _ in handled[len(first) :]} == {"a", "b"}, "both members took part"
    assert await group_lag(kafka_admin, kafka_bootstrap, group, topic) == 0, "drained before the stop"


async def test_a_dead_lettered_outcome_is_committed_at_once_with_what_was_pending(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    topic, group = await new_topic(prefix="paper.coalesce.dlq"), unique("g")
    tier = coalescing_tier(redis_client, unique("ns"))
    broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap))
    bad = event(3)
    handled: list[str] = []

    @broker.subscriber(topic, group_id=group, **SUBSCRIBE)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        if envelope.id == bad.id:
            raise PermanentError("unknown instrument")
        handled.append(envelope.id)

    await send(kafka_bootstrap, topic, (event(1), 0), (event(2), 0), (bad, 0))
    app = tier.install(FastStream(broker))
    try:
        await app.start()
        # Neither the count (1,000) nor the interval (an hour) can flush during the test.
        assert await lag_drains(kafka_admin, kafka_bootstrap, group, topic) == 0
        assert await committed_offsets(kafka_admin, group) == {0: 3}
        assert len(handled) == 2
    finally:
        await app.stop()
    [record] = await read_topic(kafka_bootstrap, f"{topic}.dlq", 1)
    assert record.value == bad.to_bytes()


async def test_without_dedup_a_revoke_commits_the_finished_work_and_never_past_a_handler_in_flight(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    topic, group = await new_topic(partitions=2, prefix="paper.coalesce.nodedup"), unique("g")
    events = [event(n) for n in range(6)]
    stuck, release = events[2], asyncio.Event()
    runs: list[str] = []
    apps: dict[str, FastStream] = {}
    for name in ("a", "b"):
        tier = EnhancedTier("coalesce-it", metrics=False, consumer=HELD)  # no Redis: no dedup
        broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap))

        @broker.subscriber(topic, group_id=group, **SUBSCRIBE)
        async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
            runs.append(envelope.id)
            if envelope.id == stuck.id:
                await release.wait()

        apps[name] = tier.install(FastStream(broker))

    await send(kafka_bootstrap, topic, *((e, 0) for e in events))
    try:
        await apps["a"].start()
        await eventually(lambda: stuck.id in runs, "consumer A to reach the third event")
        await apps["b"].start()  # joins the group: A's partitions are revoked while 2 is in flight
        for _ in range(600):  # the rebalance takes a heartbeat or two; generous deadline (30 s)
            if await committed_offsets(kafka_admin, group):
                break
            await asyncio.sleep(0.05)
        assert await committed_offsets(kafka_admin, group) == {0: 2}, "finished work, not past offset 2"
        release.set()
        await eventually(lambda: {e.id for e in events} <= set(runs), "every event to run")
    finally:
        release.set()
        for app in apps.values():
            await app.stop()  # drain, stop the broker, close: the rest is committed
    assert await group_lag(kafka_admin, kafka_bootstrap, group, topic) == 0, "committed at shutdown"
