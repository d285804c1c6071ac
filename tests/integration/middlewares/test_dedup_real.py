"""Dedup against the real Kafka and Redis: duplicates, an in-flight duplicate, a Redis outage."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream
from faststream.kafka import KafkaBroker
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from alpha_streaming._dlq import DeadLetter
from alpha_streaming._errors import PermanentError, RedeliveryRequested
from alpha_streaming._settings import DedupSettings, RedpandaSettings
from alpha_streaming._topics import dlq_topic
from middlewares._envelope import CurrentEnvelope, CurrentEnvelopes
from middlewares._retry import RetryPolicy
from middlewares._state import Outcome
from middlewares._tier import EnhancedTier
from tests.support import (
    Spy,
    commit_offset,
    event,
    eventually,
    free_port,
    lag_drains,
    read_topic,
    send,
    shut_down,
)

NewTopic = Callable[..., Awaitable[str]]
SUBSCRIBE: dict[str, Any] = {"auto_offset_reset": "earliest"}  # the tier's broker acks MANUAL


def service(
    bootstrap: str, spy: Spy, redis: aioredis.Redis, namespace: str, dedup: DedupSettings | None = None
) -> tuple[EnhancedTier, KafkaBroker]:
    """The enhanced tier (metrics off), with the spy outside it where it sees every outcome."""
    tier = EnhancedTier(
        "dedup-it",
        redis=redis,
        dedup=dedup,
        dedup_namespace=namespace,
        metrics=False,
        policy=RetryPolicy(redelivery_delay_s=0.2),
    )
    return tier, tier.broker(RedpandaSettings(bootstrap_servers=bootstrap), outer=(spy,))


async def stop(*services: tuple[EnhancedTier, KafkaBroker]) -> None:
    await asyncio.gather(*(shut_down(tier, broker) for tier, broker in services))


async def test_the_same_event_published_twice_runs_once(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    topic, group = await new_topic(prefix="paper.dedup"), unique("g")
    spy = Spy()
    tier, broker = service(kafka_bootstrap, spy, redis_client, unique("ns"))
    handled: list[str] = []

    @broker.subscriber(topic, group_id=group, **SUBSCRIBE)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        handled.append(envelope.id)

    twice, other = event(1), event(2)
    await send(kafka_bootstrap, topic, (twice, 0), (twice, 0), (other, 0))
    await broker.start()
    try:
        await eventually(lambda: len(spy.states) == 3, "three deliveries")
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await stop((tier, broker))
    assert handled == [twice.id, other.id]
    assert [s.outcome for s in spy.states] == [Outcome.PROCESSED, Outcome.DEDUPLICATED, Outcome.PROCESSED]
    assert lag == 0  # the duplicate was committed too


async def test_a_backlog_at_concurrency_one_costs_about_one_redis_call_per_record(
    kafka_bootstrap: str,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """Each done marker is a call of its own (the honest window); the claims of the records
    admitted together when the lookahead refills share one, instead of one call per record."""
    topic, group = await new_topic(prefix="paper.dedupcalls"), unique("g")
    spy = Spy()
    tier, broker = service(kafka_bootstrap, spy, redis_client, unique("ns"))
    records = 400

    @broker.subscriber(topic, group_id=group, **SUBSCRIBE)
    async def handle(body: dict[str, Any]) -> None:
        pass

    await send(kafka_bootstrap, topic, *((event(n), 0) for n in range(records)))
    app = tier.install(FastStream(broker, logger=None))  # the app's startup pipelines the subscriber
    await app.start()
    try:
        await eventually(lambda: len(spy.states) == records, "every record handled")
    finally:
        await app.stop()
    assert tier.dedup is not None
    assert [s.outcome for s in spy.states] == [Outcome.PROCESSED] * records
    # One call per record for its done marker, plus one per refill of the lookahead (a quarter
    # of it); refilled a record at a time, every claim was a call too (~2 per record).
    assert records < tier.dedup.store.calls < records * 1.15, tier.dedup.store.calls


async def test_a_duplicate_arriving_while_the_original_is_in_flight_runs_once(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """Two consumers of one group (as two processes would be), one partition each, one slow handler."""
    topic, group, namespace = (
        await new_topic(partitions=2, prefix="paper.inflight"),
        unique("g"),
        unique("ns"),
    )
    target = event(7)
    spy = Spy()
    duplicate_arrived = asyncio.Event()
    spy.on_start = lambda event_id: (
        duplicate_arrived.set() if spy.started.count(target.id) == 2 and event_id == target.id else None
    )
    handled: list[str] = []
    services = [
        service(kafka_bootstrap, spy, redis_client, namespace, DedupSettings(lease_ttl_s=20))
        for _ in range(2)
    ]

    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        handled.append(envelope.id)
        # Stay in flight until the duplicate is being processed by the other consumer.
        await asyncio.wait_for(duplicate_arrived.wait(), timeout=20)

    subscribers = []
    for _, broker in services:
        subscriber = broker.subscriber(topic, group_id=group, **SUBSCRIBE)
        subscriber(handle)
        subscribers.append(subscriber)

    await asyncio.gather(*(broker.start() for _, broker in services))
    try:
        await eventually(
            lambda: all(s.consumer is not None and len(s.consumer.assignment()) == 1 for s in subscribers),
            "each consumer to own one partition",
        )
        await send(kafka_bootstrap, topic, (target, 0), (target, 1))
        await eventually(lambda: len(spy.states) == 2, "both deliveries to finish")
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await stop(*services)
    assert handled == [target.id]
    assert sorted(s.outcome for s in spy.states) == sorted([Outcome.PROCESSED, Outcome.DEDUPLICATED])
    assert lag == 0


async def test_a_poison_record_read_again_after_its_dlq_write_is_not_dead_lettered_twice(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """The commit after a DLQ write can be lost (a rebalance, a crash): the record's next delivery
    skips the write. A replay of it (the same bytes at a new offset) is a new delivery source."""
    topic, group, namespace = await new_topic(prefix="paper.dlqonce"), unique("g"), unique("ns")
    poison = event(1)

    async def run_until_drained() -> None:
        tier, broker = service(kafka_bootstrap, Spy(), redis_client, namespace)

        @broker.subscriber(topic, group_id=group, **SUBSCRIBE)
        async def handle(body: dict[str, Any]) -> None:
            raise PermanentError("poison")

        await broker.start()
        try:
            assert await lag_drains(kafka_admin, kafka_bootstrap, group, topic) == 0
        finally:
            await stop((tier, broker))

    await send(kafka_bootstrap, topic, (poison, 0))
    await run_until_drained()
    await commit_offset(kafka_bootstrap, group, TopicPartition(topic, 0), 0)  # the commit was lost
    await send(kafka_bootstrap, topic, (poison, 0))  # a replay: offset 1
    await run_until_drained()
    end = event(2)
    await send(kafka_bootstrap, dlq_topic(topic), (end, 0))  # after everything the services wrote
    dlq = await read_topic(kafka_bootstrap, dlq_topic(topic), 3)
    # One DLQ record per delivery source (offset 0 once, its replay at offset 1 once), then `end`.
    assert [DeadLetter.from_headers(list(r.headers)).original_offset for r in dlq[:2]] == [0, 1]
    assert dlq[2].value == end.to_bytes()


class PrivateRedis:
    """A throwaway `redis-server` (no persistence) that a test may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    async def wait_ready(self) -> None:
        client = aioredis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.ConnectionError):
                    if loop.time() > deadline:
                        raise
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    await private_redis.wait_ready()
    # Short client-side retries, so the middleware's own pause policy dominates the timing.
    client = aioredis.Redis(
        port=private_redis.port,
        socket_connect_timeout=0.5,
        socket_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
    )
    yield client
    await client.aclose()


async def test_redis_stopped_mid_stream_pauses_and_resumes_losing_and_doubling_nothing(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    private_redis: PrivateRedis,
    private_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """Redis restarts empty (`--save ''`): done markers written before the outage are gone.

    That is why "nothing doubled" is asserted for what Kafka delivers: events processed before
    the outage were committed, so they are not delivered again; events published during the
    outage wait (pause, redeliver) and run exactly once after Redis is back.
    """
    topic, group = await new_topic(prefix="paper.outage"), unique("g")
    spy = Spy()
    tier, broker = service(
        kafka_bootstrap, spy, private_client, unique("ns"), DedupSettings(outage_pause_s=1.0)
    )
    assert tier.dedup is not None
    handled: list[str] = []

    @broker.subscriber(topic, group_id=group, **SUBSCRIBE)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        handled.append(envelope.id)

    before = [event(n) for n in range(5)]
    during = [event(n) for n in range(5, 10)]
    await broker.start()
    try:
        await send(kafka_bootstrap, topic, *((e, 0) for e in before))
        await eventually(lambda: len(handled) == 5, "the events before the outage")
        await eventually(lambda: len(spy.states) == 5, "their processing to end")

        private_redis.stop()
        await send(kafka_bootstrap, topic, *((e, 0) for e in during))
        # Paused: the consumer keeps trying the first waiting record and runs nothing.
        await eventually(
            lambda: sum(s.redis_outage == "paused" for s in spy.states) >= 2, "two paused deliveries"
        )
        assert len(handled) == 5
        assert all(s.outcome is Outcome.REDELIVER for s in spy.states[5:])  # never committed past
        assert broker.subscribers[0].running

        private_redis.start()
        await eventually(lambda: len(handled) == 10, "the events published during the outage")
        await eventually(
            lambda: len(spy.states) >= 10 and handled == [e.id for e in before + during], "order"
        )
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await stop((tier, broker))
    assert handled == [e.id for e in before + during]  # nothing lost, nothing run twice, in order
    assert lag == 0
    for e in during:
        assert await tier.dedup.marker(group, e.id) == "done"


async def test_a_batch_subscriber_handles_each_batch_once_in_order_after_the_previous_one_is_done(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """The next batch is read and claimed while this one's done markers are written (the batch
    lane), but its handler starts only once every event of the batch before it is marked done."""
    topic, group = await new_topic(partitions=3, prefix="paper.batchlane"), unique("g")
    tier, broker = service(kafka_bootstrap, Spy(), redis_client, unique("ns"))
    dedup = tier.dedup
    assert dedup is not None
    sent = [(event(n), n % 3) for n in range(900)]
    handled: list[tuple[int, int]] = []  # (partition, n) in handling order
    unconfirmed: list[str] = []
    previous: list[str] = []

    @broker.subscriber(topic, group_id=group, batch=True, max_records=50, **SUBSCRIBE)
    async def handle(bodies: list[dict[str, Any]], envelopes: CurrentEnvelopes) -> None:
        marks = [await dedup.marker(group, event_id) for event_id in previous]
        unconfirmed.extend(i for i, mark in zip(previous, marks, strict=True) if mark != "done")
        handled.extend((body["n"] % 3, body["n"]) for body in bodies)
        previous[:] = [envelope.id for envelope in envelopes]

    await send(kafka_bootstrap, topic, *sent)
    app = tier.install(FastStream(broker, logger=None))
    await app.start()
    try:
        await eventually(lambda: len(handled) >= len(sent), "every record handled")
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await app.stop()
    assert unconfirmed == [], "a batch handler started before the previous batch was marked done"
    assert sorted(n for _, n in handled) == list(range(len(sent))), "each record handled once"
    for partition in range(3):
        assert [n for p, n in handled if p == partition] == list(range(partition, len(sent), 3))
    assert lag == 0


async def test_a_batch_sent_back_for_redelivery_is_read_again_and_the_stream_goes_on(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    """The batch read after the seek back is the same records again: it runs, nothing is lost."""
    topic, group = await new_topic(partitions=2, prefix="paper.batchredeliver"), unique("g")
    tier, broker = service(kafka_bootstrap, Spy(), redis_client, unique("ns"))
    sent = [(event(n), n % 2) for n in range(300)]
    handled: list[int] = []
    sent_back: list[int] = []

    @broker.subscriber(topic, group_id=group, batch=True, max_records=40, **SUBSCRIBE)
    async def handle(bodies: list[dict[str, Any]]) -> None:
        if not sent_back and any(body["n"] == 150 for body in bodies):
            sent_back.append(150)
            raise RedeliveryRequested("not now")
        handled.extend(body["n"] for body in bodies)

    await send(kafka_bootstrap, topic, *sent)
    app = tier.install(FastStream(broker, logger=None))
    await app.start()
    try:
        await eventually(lambda: len(set(handled)) >= len(sent), "every record handled")
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await app.stop()
    assert sent_back == [150]
    assert sorted(handled) == list(range(len(sent))), "each record handled once"
    assert lag == 0
