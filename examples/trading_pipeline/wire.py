"""Reading the pipeline back from Kafka: offsets, record ranges and consumer-group positions.

The demo's report is built only from what these functions read off the broker (plus the
services' metrics and Redis), never from counters kept by the demo script itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from alpha_streaming import EnvelopeError, EventEnvelope, StoredRecord, read_bounded, topic_partitions

__all__ = (
    "Offsets",
    "WireRecord",
    "committed_offsets",
    "end_offsets",
    "partitions_of",
    "read_range",
    "seed_group",
)

Offsets = dict[TopicPartition, int]


@dataclass(frozen=True)
class WireRecord(StoredRecord):
    """One record as it is stored on the broker, with its envelope decoded on demand."""

    @cached_property
    def envelope(self) -> EventEnvelope | None:
        """The record's envelope, or None when the bytes are not one (a poison record)."""
        if self.value is None:
            return None
        try:
            return EventEnvelope.from_bytes(self.value)
        except EnvelopeError:
            return None


async def partitions_of(bootstrap: list[str], topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of `topics`; raises `LookupError` for a topic that does not exist."""
    names = list(topics)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        counts = await topic_partitions(admin, names)
    finally:
        await admin.close()
    missing = [name for name in names if not counts.get(name)]
    if missing:
        raise LookupError(f"topics do not exist on the broker: {', '.join(missing)}")
    return [TopicPartition(name, p) for name in names for p in range(counts[name])]


async def end_offsets(bootstrap: list[str], topics: Iterable[str]) -> Offsets:
    """The next offset to be written on every partition of `topics` (the log end)."""
    partitions = await partitions_of(bootstrap, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: Mapping[TopicPartition, int] = await consumer.end_offsets(partitions)
        return dict(ends)
    finally:
        await consumer.stop()


async def read_range(bootstrap: list[str], start: Offsets, end: Offsets) -> list[WireRecord]:
    """Every record from `start` (inclusive) to `end` (exclusive), per partition, in offset order."""
    wanted = {tp: (start.get(tp, 0), stop) for tp, stop in end.items() if stop > start.get(tp, 0)}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        for tp, (first, _) in wanted.items():
            consumer.seek(tp, first)
        stops = {tp: stop for tp, (_, stop) in wanted.items()}
        return [WireRecord.from_record(record) async for record in read_bounded(consumer, ends=stops)]
    finally:
        await consumer.stop()


async def seed_group(bootstrap: list[str], group_id: str, offsets: Offsets) -> None:
    """Make a new consumer group start at `offsets` (instead of the earliest or latest record).

    A run-scoped group seeded at the log ends of the run's start reads this run's records only.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: list[str], group_id: str) -> Offsets:
    """The offsets `group_id` has committed, per partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group_id)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}
