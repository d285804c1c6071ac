"""Manual commits on the real broker: exactly the offsets the caller chose, nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from alpha_streaming import RedpandaConsumer, RedpandaProducer, RedpandaSettings
from alpha_streaming._clients import ConsumedRecord, OutgoingRecord
from tests.conftest import NewTopicFactory

PER_PARTITION = 100


async def committed(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def fill(settings: RedpandaSettings, topic: str, partitions: int) -> None:
    async with RedpandaProducer(settings) as producer:
        await producer.send_many(
            topic,
            [
                OutgoingRecord(key=None, value={"n": n}, partition=p)
                for p in range(partitions)
                for n in range(1, PER_PARTITION + 1)
            ],
        )


async def first_per_partition(consumer: RedpandaConsumer, partitions: int) -> dict[int, ConsumedRecord]:
    firsts: dict[int, ConsumedRecord] = {}
    async with asyncio.timeout(30):
        async for record in consumer:
            firsts.setdefault(record.partition, record)
            if len(firsts) == partitions:
                break
    return firsts


async def test_commit_record_resumes_exactly_after_it_on_its_partition(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=2, prefix="direct.commit")
    await fill(settings, topic, partitions=2)
    group = unique("commit")

    seen: list[ConsumedRecord] = []
    async with RedpandaConsumer(settings, topics=[topic], group_id=group) as consumer:
        async with asyncio.timeout(30):
            async for record in consumer:
                seen.append(record)
                if len(seen) == 2 * PER_PARTITION:
                    break
        fortieth = next(r for r in seen if r.partition == 0 and r.value == {"n": 40})
        assert await consumer.commit(fortieth, wait=True) == {TopicPartition(topic, 0): fortieth.offset + 1}
    # Everything was fetched and iterated, but only the chosen record's next offset is committed.
    assert await committed(kafka_admin, group) == {TopicPartition(topic, 0): 40}

    async with RedpandaConsumer(settings, topics=[topic], group_id=group) as again:
        firsts = await first_per_partition(again, partitions=2)
    assert firsts[0].value == {"n": 41} and firsts[0].offset == 40
    assert firsts[1].value == {"n": 1} and firsts[1].offset == 0  # nothing was committed there


async def test_commit_without_record_covers_what_the_caller_moved_past(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.commit")
    await fill(settings, topic, partitions=1)
    tp = TopicPartition(topic, 0)

    group = unique("iter")
    async with RedpandaConsumer(settings, topics=[topic], group_id=group) as consumer:
        async with asyncio.timeout(30):
            async for record in consumer:
                if record.offset == 9:
                    break
        # Records 0..8 were moved past; record 9 is still in the caller's hands.
        assert await consumer.commit() == {tp: 9}
        assert await consumer.commit() == {}  # nothing new
        held = await anext(consumer)  # moving on makes record 9 processed
        assert held.offset == 10
        assert await consumer.commit() == {tp: 10}
        for _ in range(5):
            await anext(consumer)
    # stop() committed nothing of the records iterated after the last commit.
    assert await committed(kafka_admin, group) == {tp: 10}

    group = unique("batch")
    async with RedpandaConsumer(settings, topics=[topic], group_id=group) as consumer:
        first: Sequence[ConsumedRecord] = []
        async with asyncio.timeout(30):
            while not first:
                first = await consumer.getmany(max_records=7)
        assert await consumer.commit() == {}  # the batch is still being processed
        second = await consumer.getmany(max_records=7)
        assert await consumer.commit() == {tp: first[-1].offset + 1}
        await consumer.getmany(max_records=7)
        assert await consumer.commit() == {tp: second[-1].offset + 1}
    assert await committed(kafka_admin, group) == {tp: second[-1].offset + 1}


class Recorder:
    def __init__(self, consumer: RedpandaConsumer | None = None) -> None:
        self.consumer = consumer
        self.events: list[tuple[str, set[TopicPartition]]] = []
        self.committed_on_revoke: list[dict[TopicPartition, int]] = []
        self.rebalanced = asyncio.Event()  # set once the group has moved partitions

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:  # aiokafka reports an empty revocation on the first join
            return
        self.events.append(("revoked", set(revoked)))
        if self.consumer is not None:
            self.committed_on_revoke.append(await self.consumer.commit())

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", set(assigned)))
        if len(self.events) >= 3:
            self.rebalanced.set()


async def test_rebalance_callback_sees_revocation_and_can_commit_processed_work(
    settings: RedpandaSettings,
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=2, prefix="direct.rebalance")
    await fill(settings, topic, partitions=2)
    group = unique("rebalance")
    recorder = Recorder()
    first = RedpandaConsumer(
        settings, topics=[topic], group_id=group, on_rebalance=recorder, heartbeat_interval_ms=100
    )
    recorder.consumer = first
    async with first:
        moved_past = 0
        async with asyncio.timeout(30):
            async for _record in first:
                moved_past += 1
                if moved_past == 11:
                    break
        assert recorder.events == [("assigned", {TopicPartition(topic, 0), TopicPartition(topic, 1)})]

        # A second member joins; aiokafka's coordinator task rebalances the first member in the
        # background while the caller still holds its 11th record.
        second = RedpandaConsumer(settings, topics=[topic], group_id=group, heartbeat_interval_ms=100)
        joining = asyncio.create_task(second.start())
        async with asyncio.timeout(30):
            await recorder.rebalanced.wait()
        await joining
        await second.stop()

    kinds = [kind for kind, _ in recorder.events]
    assert kinds[:3] == ["assigned", "revoked", "assigned"]
    assert len(recorder.events[2][1]) == 1, "after the join each member owns one partition"
    # The revoke callback could still commit the 10 records the caller had moved past.
    assert sum(recorder.committed_on_revoke[0].values()) == 10
    assert sum((await committed(kafka_admin, group)).values()) == 10
