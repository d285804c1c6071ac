"""The pipelined core against the real Kafka: key-ordered concurrency, slots, retries, seek-backs.

Each service is wired as a user would (`tier.broker()`, `tier.install(FastStream(broker))`); the
handlers await a few milliseconds of simulated I/O so that records overlap when they may.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream import FastStream

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import RedeliveryRequested
from alpha_streaming._settings import RedpandaSettings
from middlewares._envelope import CurrentEnvelope
from middlewares._retry import Budget, RetryPolicy
from middlewares._tier import EnhancedTier
from tests.support import eventually, lag_drains

NewTopic = Callable[..., Awaitable[str]]
IO_S = 0.003


async def send_keyed(bootstrap: str, topic: str, items: list[tuple[str | None, int, int]]) -> None:
    """(key, partition, seq) per record, as envelopes whose data carries the key and seq."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, partition, seq in items:
            envelope = EventEnvelope.create(type="tick", data={"key": key, "seq": seq}, source="feed")
            headers = [(k, v.encode()) for k, v in envelope.headers().items()]
            await producer.send(
                topic,
                envelope.to_bytes(),
                key=key.encode() if key is not None else None,
                partition=partition,
                headers=headers,
            )
        await producer.flush()
    finally:
        await producer.stop()


class Recorder:
    """What ran, in which order, and how many handlers ran at once."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, int]] = []
        self.finished: list[tuple[Any, int]] = []
        self.running = 0
        self.most_at_once = 0

    async def enter(self, key: Any, seq: int) -> None:
        self.started.append((key, seq))
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(IO_S)  # the handler's I/O

    def leave(self, key: Any, seq: int) -> None:
        self.running -= 1
        self.finished.append((key, seq))

    def order_of(self, key: Any) -> list[int]:
        return [seq for k, seq in self.finished if k == key]


async def serve(
    bootstrap: str,
    topic: str,
    group: str,
    handler: Callable[..., Awaitable[None]],
    *,
    concurrency: int | None = None,
    policy: RetryPolicy | None = None,
) -> FastStream:
    tier = EnhancedTier("pipeline-it", metrics=False, policy=policy or RetryPolicy(redelivery_delay_s=0.1))
    broker = tier.broker(RedpandaSettings(bootstrap_servers=bootstrap), logger=None)
    subscriber = broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    subscriber(handler)
    if concurrency is not None:
        tier.set_concurrency(subscriber, concurrency)
    app = tier.install(FastStream(broker, logger=None))
    await app.start()
    return app


async def test_concurrency_runs_keys_concurrently_and_each_key_in_order(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    topic, group = await new_topic(partitions=2, prefix="paper.pipeline"), unique("g")
    keys = [f"k{n}" for n in range(8)]
    items = [(key, n % 2, seq) for seq in range(25) for n, key in enumerate(keys)]
    await send_keyed(kafka_bootstrap, topic, items)
    seen = Recorder()

    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        await seen.enter(body["key"], body["seq"])
        seen.leave(body["key"], body["seq"])

    app = await serve(kafka_bootstrap, topic, group, handle, concurrency=4)
    try:
        await eventually(lambda: len(seen.finished) == len(items), "every record handled")
    finally:
        await app.stop()
    for key in keys:
        assert seen.order_of(key) == list(range(25)), f"key {key} out of order"
    assert 1 < seen.most_at_once <= 4, seen.most_at_once
    assert await lag_drains(kafka_admin, kafka_bootstrap, group, topic) == 0


async def test_by_default_one_handler_at_a_time_in_partition_order(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    topic, group = await new_topic(partitions=2, prefix="paper.pipeline"), unique("g")
    # Different keys in one partition: the default keeps the partition's order across keys.
    items = [(f"k{seq % 5}", seq % 2, seq) for seq in range(60)]
    await send_keyed(kafka_bootstrap, topic, items)
    seen = Recorder()

    async def handle(body: dict[str, Any]) -> None:
        partition = body["seq"] % 2
        await seen.enter(partition, body["seq"])
        seen.leave(partition, body["seq"])

    app = await serve(kafka_bootstrap, topic, group, handle)
    try:
        await eventually(lambda: len(seen.finished) == len(items), "every record handled")
    finally:
        await app.stop()
    assert seen.most_at_once == 1
    for partition in (0, 1):
        assert seen.order_of(partition) == [s for _, p, s in items if p == partition]
    assert await lag_drains(kafka_admin, kafka_bootstrap, group, topic) == 0


async def test_a_key_being_retried_holds_only_its_own_later_records(
    kafka_bootstrap: str, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    topic, group = await new_topic(partitions=1, prefix="paper.pipeline"), unique("g")
    # One partition: "slow" seq 0 fails twice; "fast" records follow it in the same partition.
    items = [("slow", 0, 0), ("slow", 0, 1), *(("fast", 0, seq) for seq in range(2, 12))]
    await send_keyed(kafka_bootstrap, topic, items)
    seen = Recorder()
    failures = {"left": 2}

    async def handle(body: dict[str, Any]) -> None:
        await seen.enter(body["key"], body["seq"])
        if body["seq"] == 0 and failures["left"]:
            failures["left"] -= 1
            seen.running -= 1
            raise ConnectionError("downstream not ready")
        seen.leave(body["key"], body["seq"])

    backoff = Budget(max_attempts=3, base_delay_s=0.4, max_delay_s=0.4, jitter=0.0)
    policy = RetryPolicy(default=backoff, rules={ConnectionError: backoff}, redelivery_delay_s=0.1)
    app = await serve(kafka_bootstrap, topic, group, handle, concurrency=4, policy=policy)
    try:
        await eventually(lambda: len(seen.finished) == len(items), "every record handled")
    finally:
        await app.stop()
    assert seen.order_of("slow") == [0, 1], "the retried key kept its order"
    slow_done = seen.finished.index(("slow", 0))
    fast_done = [seen.finished.index(("fast", seq)) for seq in range(2, 12)]
    assert max(fast_done) < slow_done, "other keys ran while the slow key was being retried"


async def test_records_after_one_sought_back_to_run_after_it_in_order(
    kafka_bootstrap: str, kafka_admin: AIOKafkaAdminClient, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    topic, group = await new_topic(partitions=1, prefix="paper.pipeline"), unique("g")
    items = [(None, 0, seq) for seq in range(10)]
    await send_keyed(kafka_bootstrap, topic, items)
    seen = Recorder()
    undecided = {"left": 1}

    async def handle(body: dict[str, Any]) -> None:
        await seen.enter(0, body["seq"])
        if body["seq"] == 3 and undecided["left"]:
            undecided["left"] -= 1
            seen.running -= 1
            raise RedeliveryRequested("cannot be decided now")
        seen.leave(0, body["seq"])

    app = await serve(kafka_bootstrap, topic, group, handle)
    try:
        await eventually(lambda: len(seen.finished) == len(items), "every record handled")
    finally:
        await app.stop()
    # The records admitted behind 3 never ran before it: each ran once, after it, in order.
    assert seen.started == [(0, s) for s in (0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9)]
    assert seen.order_of(0) == list(range(10))
    assert await lag_drains(kafka_admin, kafka_bootstrap, group, topic) == 0
