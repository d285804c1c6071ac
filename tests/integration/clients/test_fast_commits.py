"""`commit(record)`'s fast path on the real broker: exactly the recorded offsets reach Kafka, on
flush, in the background, on stop and before a rebalance takes the partitions; never past a record
that was not committed; a commit that cannot happen is reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from alpha_streaming import RedpandaConsumer, RedpandaSettings
from alpha_streaming._clients import ConsumedRecord
from alpha_streaming._errors import KafkaClientError
from tests.conftest import NewTopicFactory
from tests.integration.clients.test_commits import PER_PARTITION, fill

LATER: dict[str, Any] = {
    "commit_every": 10_000,
    "commit_interval_s": 3600.0,
}  # no background commit in the test


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 2) -> dict[int, int | None]:
    """The group's committed offsets, read with aiokafka's `committed()` (no group join)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        return {p: await reader.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await reader.stop()


async def read(consumer: RedpandaConsumer, count: int) -> list[ConsumedRecord]:
    records: list[ConsumedRecord] = []
    async with asyncio.timeout(30):
        async for record in consumer:
            records.append(record)
            if len(records) == count:
                break
    return records


async def test_flush_and_stop_commit_exactly_the_recorded_offsets(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=2, prefix="direct.fast")
    await fill(settings, topic, partitions=2)
    group = unique("fast")
    last = {0: 40, 1: 70}  # per partition, the last record committed (values n = 1..100)
    async with RedpandaConsumer(settings, topics=[topic], group_id=group, **LATER) as consumer:
        records = await read(consumer, 2 * PER_PARTITION)
        for record in records:
            assert isinstance(record.value, dict)
            if record.value["n"] <= last[record.partition]:
                assert await consumer.commit(record) == {}
        assert await committed(kafka_bootstrap, group, topic) == {0: None, 1: None}
        flushed = await consumer.flush_commits()
        assert flushed == {TopicPartition(topic, 0): 40, TopicPartition(topic, 1): 70}
        assert await committed(kafka_bootstrap, group, topic) == {0: 40, 1: 70}
        # Recorded after the flush, committed by stop(); the 29 records read after it never are.
        (next_one,) = [r for r in records if r.partition == 1 and r.offset == 70]
        assert await consumer.commit(next_one) == {}
    assert await committed(kafka_bootstrap, group, topic) == {0: 40, 1: 71}

    async with RedpandaConsumer(settings, topics=[topic], group_id=group) as again:
        firsts: dict[int, int] = {}
        for record in await read(again, 2 * PER_PARTITION - 40 - 71):
            firsts.setdefault(record.partition, record.offset)
    assert firsts == {0: 40, 1: 71}


async def test_background_commit_after_commit_every_records(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.fast")
    await fill(settings, topic, partitions=1)
    group = unique("background")
    async with RedpandaConsumer(
        settings, topics=[topic], group_id=group, commit_every=10, commit_interval_s=3600.0
    ) as consumer:
        for record in await read(consumer, 10):
            await consumer.commit(record)
        async with asyncio.timeout(15):  # only the background task can commit here
            # The offset lives in the broker: nothing local to await, so poll it.
            while (await committed(kafka_bootstrap, group, topic, 1))[0] is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await committed(kafka_bootstrap, group, topic, 1) == {0: 10}


class Rebalanced:
    def __init__(self) -> None:
        self.assignments = 0
        self.moved = asyncio.Event()  # set on the assignment after the first

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assignments += 1
        if self.assignments >= 2:
            self.moved.set()


@asynccontextmanager
async def second_member(
    settings: RedpandaSettings, topic: str, group: str, seen: Rebalanced
) -> AsyncIterator[None]:
    """A second member joins; the block runs once the first member has its new assignment."""
    second = RedpandaConsumer(settings, topics=[topic], group_id=group, heartbeat_interval_ms=100)
    joining = asyncio.create_task(second.start())
    try:
        async with asyncio.timeout(30):
            await seen.moved.wait()
            await joining
        yield
    finally:
        await second.stop()


async def test_revoke_commits_recorded_offsets_before_the_partitions_go(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=2, prefix="direct.fast")
    await fill(settings, topic, partitions=2)
    group = unique("revoke")
    seen = Rebalanced()
    first = RedpandaConsumer(
        settings, topics=[topic], group_id=group, on_rebalance=seen, heartbeat_interval_ms=100, **LATER
    )
    async with first:
        expected: dict[int, int | None] = {0: None, 1: None}
        for record in await read(first, 11):
            await first.commit(record)
            expected[record.partition] = record.offset + 1
        async with second_member(settings, topic, group, seen):
            # The first member is still running: its stop() has not committed anything yet.
            assert await committed(kafka_bootstrap, group, topic) == expected


async def test_a_record_whose_partition_moved_away_is_reported_not_committed(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=2, prefix="direct.fast")
    await fill(settings, topic, partitions=2)
    group = unique("moved")
    seen = Rebalanced()
    first = RedpandaConsumer(
        settings, topics=[topic], group_id=group, on_rebalance=seen, heartbeat_interval_ms=100, **LATER
    )
    async with first:
        held: dict[int, ConsumedRecord] = {}
        async with asyncio.timeout(30):
            async for record in first:
                held[record.partition] = record
                if len(held) == 2:
                    break
        async with second_member(settings, topic, group, seen):
            (kept,) = [tp.partition for tp in first.assignment()]
            lost = 1 - kept
            await first.commit(held[kept])
            await first.commit(held[lost])
            with pytest.raises(KafkaClientError, match=rf"recorded for {topic}\[{lost}\] were not committed"):
                await first.flush_commits()
            assert await committed(kafka_bootstrap, group, topic) == {
                kept: held[kept].offset + 1,
                lost: None,
            }
