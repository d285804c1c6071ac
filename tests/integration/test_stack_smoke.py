"""The stack is real: a Kafka broker that keeps committed offsets, and a Redis that stores keys."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.conftest import NewTopicFactory

MESSAGES = 1_000


def consumer_for(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def test_keyed_messages_resume_from_committed_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory, unique: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=3, prefix="smoke")
    group = unique("smoke-group")

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=f"key-{i % 10}".encode(), value=f"{i}".encode())
            for i in range(MESSAGES)
        ]
        metadata = [await f for f in futures]
    finally:
        await producer.stop()
    assert {m.partition for m in metadata} == {0, 1, 2}, "10 keys should spread over 3 partitions"

    # First consumer: read half, commit exactly what it read, stop.
    first_run: dict[int, list[int]] = defaultdict(list)
    consumer = consumer_for(kafka_bootstrap, topic, group)
    await consumer.start()
    try:
        seen = 0
        while seen < MESSAGES // 2:
            batch = await consumer.getmany(timeout_ms=1000, max_records=50)
            for tp, records in batch.items():
                first_run[tp.partition].extend(r.offset for r in records)
                seen += len(records)
                await consumer.commit({tp: records[-1].offset + 1})
    finally:
        await consumer.stop()
    committed = {p: offsets[-1] + 1 for p, offsets in first_run.items()}

    # Second consumer, same group: it must start exactly at the committed offsets.
    second_run: dict[int, list[int]] = defaultdict(list)
    consumer = consumer_for(kafka_bootstrap, topic, group)
    await consumer.start()
    try:
        for partition, offset in committed.items():
            assert await consumer.committed(TopicPartition(topic, partition)) == offset
        while sum(map(len, first_run.values())) + sum(map(len, second_run.values())) < MESSAGES:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "the rest of the messages never arrived"
            for tp, records in batch.items():
                second_run[tp.partition].extend(r.offset for r in records)
    finally:
        await consumer.stop()

    for partition, offsets in second_run.items():
        assert offsets[0] == committed.get(partition, 0), f"partition {partition} did not resume"
    every = sorted((p, o) for run in (first_run, second_run) for p, offs in run.items() for o in offs)
    assert len(every) == len(set(every)) == MESSAGES, "each message exactly once across both runs"


async def test_redis_round_trip(redis_client: aioredis.Redis, unique: Callable[[str], str]) -> None:
    key = unique("smoke:key")
    await redis_client.set(key, b"\x00value\xff", px=60_000)
    assert await redis_client.get(key) == b"\x00value\xff"
    assert 0 < await redis_client.pttl(key) <= 60_000
    await redis_client.delete(key)
    assert await redis_client.get(key) is None
