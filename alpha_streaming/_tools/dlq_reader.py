"""Reading dead-letter topics: each record with its error headers decoded.

`inspect_dlq` reads a DLQ topic from the beginning up to the end offsets snapshotted when it
starts, with no consumer group: it commits nothing and changes nothing on the cluster. A record
that is not a DLQ record (no error headers) is still listed, with the reason (`problem`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from alpha_streaming._admin import broker_admin, topic_partitions
from alpha_streaming._dlq import DeadLetter
from alpha_streaming._envelope import EnvelopeHeaders
from alpha_streaming._errors import UnknownTopicError
from alpha_streaming._tools.log_reader import (
    ProgressCallback,
    StoredRecord,
    read_bounded,
    reraise_kafka_errors,
)

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

__all__ = ("DlqEntry", "dlq_consumer", "entry_of", "inspect_dlq", "preview")


@dataclass(frozen=True, slots=True)
class DlqEntry(StoredRecord):
    """One record of a DLQ topic, with its error headers decoded when it is a DLQ record."""

    dead_letter: DeadLetter | None
    problem: str | None = None
    """Why the record is not a DLQ record (None when it is one)."""

    @property
    def event_type(self) -> str | None:
        return self.header(EnvelopeHeaders.TYPE)

    def to_json(self, preview_bytes: int = 200) -> dict[str, Any]:
        """A JSON-ready view for scripts (`dlq inspect --json`)."""
        out: dict[str, Any] = {
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key_text,
            "event_type": self.event_type,
            "is_dead_letter": self.dead_letter is not None,
            "value_preview": preview(self.value, preview_bytes),
            "value_bytes": None if self.value is None else len(self.value),
        }
        letter = self.dead_letter
        if letter is None:
            out["problem"] = self.problem
            return out
        out.update(
            original_topic=letter.original_topic,
            original_partition=letter.original_partition,
            original_offset=letter.original_offset,
            consumer_group=letter.consumer_group,
            error=letter.exception_fqcn,
            message=letter.exception_message,
            attempts=letter.attempts,
            failed_at=letter.failed_at.isoformat(),
            service=letter.service,
        )
        return out


def preview(value: bytes | None, limit: int = 200) -> str | None:
    """The first `limit` bytes, printable: non-ASCII and control bytes escaped (`\\xNN`)."""
    if value is None:
        return None
    text = value[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text + ("..." if len(value) > limit else "")


def entry_of(record: Any) -> DlqEntry:
    """A consumed record as a `DlqEntry`; its error headers decoded, or the reason they cannot be."""
    entry = DlqEntry.from_record(record, dead_letter=None)
    try:
        return dataclasses.replace(entry, dead_letter=DeadLetter.from_headers(entry.headers))
    except ValueError as exc:
        return dataclasses.replace(entry, problem=str(exc))


@asynccontextmanager
async def dlq_consumer(broker: KafkaBroker, topic: str, group_id: str | None) -> AsyncIterator[Any]:
    """A consumer assigned every partition of `topic`, positioned at the group's committed offsets
    (or the beginning without a group); stopped on exit."""
    counts = await topic_partitions(broker_admin(broker), [topic])
    if topic not in counts:
        raise UnknownTopicError(
            f"DLQ topic {topic!r} does not exist; check the name (DLQ topics end in .dlq)"
        )
    consumer = broker.config.broker_config.builder(
        group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        with reraise_kafka_errors(f"reading {topic!r}"):
            await consumer.start()
            # assign() rather than subscribe(): no group join, no rebalance wait; with a group id,
            # aiokafka still starts each partition at the group's committed offset.
            consumer.assign([TopicPartition(topic, p) for p in range(counts[topic])])
        yield consumer
    finally:
        await consumer.stop()


async def inspect_dlq(
    broker: KafkaBroker,
    topic: str,
    *,
    limit: int | None = None,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1000,
) -> AsyncIterator[DlqEntry]:
    """Every record of `topic` up to its current end, without a consumer group (commits nothing)."""
    if limit is not None and limit <= 0:
        return
    seen = 0
    async with dlq_consumer(broker, topic, None) as consumer:
        records = read_bounded(consumer, on_progress=on_progress, progress_every=progress_every)
        try:
            async for record in records:
                yield entry_of(record)
                seen += 1
                if limit is not None and seen >= limit:
                    return
        finally:
            await records.aclose()
