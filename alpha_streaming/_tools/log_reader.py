"""Reading a topic's log up to fixed end offsets: a bounded read that stops instead of waiting.

Tools that report on or replay what a topic holds (the DLQ tools, the demo's report) read from
a start position up to end offsets fixed in advance, then stop: records written meanwhile are
left for the next run. `read_bounded` is that loop; `StoredRecord` is a record as the broker
stores it (key, value bytes and headers untouched).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from aiokafka import errors as ak

from alpha_streaming._admin import describe_error
from alpha_streaming._errors import KafkaClientError

if TYPE_CHECKING:
    from aiokafka import TopicPartition

__all__ = ("STALL_TIMEOUT_S", "ProgressCallback", "StoredRecord", "read_bounded", "reraise_kafka_errors")

ProgressCallback = Callable[[int, int], None]
"""Called as `(records_done, records_total)` every `progress_every` records."""

# A fetch that returns nothing for this long while records are still expected means the
# cluster is unhealthy; better to stop with an error than to hang a script.
STALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record as the broker stores it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_record(cls, record: Any, **extra: Any) -> Self:
        """From an aiokafka `ConsumerRecord`; `extra` fills the fields a subclass adds."""
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
            headers=tuple((name, bytes(value)) for name, value in record.headers or ()),
            **extra,
        )

    def header(self, name: str) -> str | None:
        """The first header called `name`, decoded as UTF-8 (None when absent)."""
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    @property
    def key_text(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", "replace")


class reraise_kafka_errors:  # lower case: it reads like a function: `with reraise_kafka_errors("reading"):`
    """Re-raise aiokafka errors as `KafkaClientError` naming the operation."""

    __slots__ = ("_operation",)

    def __init__(self, operation: str) -> None:
        self._operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ak.KafkaError):
            raise KafkaClientError(f"{self._operation}: {describe_error(exc)}") from exc


async def read_bounded(
    consumer: Any,
    *,
    ends: Mapping[TopicPartition, int] | None = None,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1000,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> AsyncGenerator[Any, None]:
    """The records of a started, assigned aiokafka consumer from each partition's position up to
    `ends` (exclusive; default: every assigned partition's end offset, snapshotted now).

    Raises `KafkaClientError` when no record arrives for `stall_timeout_s` although some
    partitions have not reached their end offsets.
    """
    tps = list(consumer.assignment()) if ends is None else list(ends)
    with reraise_kafka_errors("reading end offsets"):
        stops: Mapping[TopicPartition, int] = await consumer.end_offsets(tps) if ends is None else ends
        starts = {tp: await consumer.position(tp) for tp in tps}
    total = sum(max(stops[tp] - starts[tp], 0) for tp in tps)
    remaining = {tp for tp in tps if starts[tp] < stops[tp]}
    done = 0
    loop = asyncio.get_running_loop()
    last_fetch = loop.time()
    while remaining:
        with reraise_kafka_errors("fetching records"):
            batch = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset >= stops[tp]:
                    break
                yield record
                done += 1
                if on_progress is not None and done % progress_every == 0:
                    on_progress(done, total)
        for tp in list(remaining):
            # position() also moves past control records and compacted gaps.
            with reraise_kafka_errors("reading positions"):
                if await consumer.position(tp) >= stops[tp]:
                    remaining.discard(tp)
        if batch:
            last_fetch = loop.time()
        elif loop.time() - last_fetch > stall_timeout_s:
            raise KafkaClientError(
                f"no records for {stall_timeout_s:.0f} s although partitions "
                f"{sorted(f'{tp.topic}[{tp.partition}]' for tp in remaining)} are not at their end offsets"
            )
    if on_progress is not None and done % progress_every != 0:
        on_progress(done, total)
