"""Helpers for the envelope/dedup integration tests: group lag, plain wire reads, polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

DEADLINE_S = 30.0


async def eventually(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `check` until it holds; generous deadline, never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def group_lag(admin: AIOKafkaAdminClient, bootstrap: str, group: str, topic: str) -> int:
    """End offsets minus the group's committed offsets, summed over the topic's partitions."""
    committed = await admin.list_consumer_group_offsets(group)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer.topics()
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())


async def read_topic(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """The first `count` records of `topic`, read by a plain aiokafka consumer (no group, no framework)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(DEADLINE_S):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records[:count]


async def lag_drains(admin: AIOKafkaAdminClient, bootstrap: str, group: str, topic: str) -> int:
    """Poll the group's lag until it is 0 (commits land just after processing); return the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        lag = await group_lag(admin, bootstrap, group, topic)
        if lag == 0 or loop.time() > deadline:
            return lag
        await asyncio.sleep(0.1)
