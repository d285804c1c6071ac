"""Explicit offset commits and seeks for the records of one consumed message (or batch).

Always explicit offsets: the no-argument `commit()` commits every position the consumer has
fetched, which would skip records that are still being retried (seed-lessons.md #1, #7).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka.message import FakeConsumer

__all__ = ("commit_records", "first_offsets", "is_fake", "next_offsets", "seek_back")


def is_fake(consumer: object) -> bool:
    """FastStream's in-memory test broker hands out a consumer that cannot commit offsets."""
    return consumer is None or isinstance(consumer, FakeConsumer)


def next_offsets(records: Iterable[ConsumerRecord[Any, Any]]) -> dict[TopicPartition, int]:
    """Per partition, the offset after the last record: what a commit of these records stores."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def first_offsets(records: Iterable[ConsumerRecord[Any, Any]]) -> dict[TopicPartition, int]:
    """Per partition, the earliest record: where to seek so none of them is skipped."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        current = offsets.get(tp)
        offsets[tp] = record.offset if current is None else min(current, record.offset)
    return offsets


async def commit_records(consumer: Any, records: Iterable[ConsumerRecord[Any, Any]]) -> None:
    if is_fake(consumer):
        return
    await consumer.commit(next_offsets(records))


def seek_back(consumer: Any, records: Iterable[ConsumerRecord[Any, Any]]) -> None:
    if is_fake(consumer):
        return
    for tp, offset in first_offsets(records).items():
        consumer.seek(tp, offset)
