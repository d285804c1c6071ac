"""Explicit offset commits and seeks for the records of one consumed message (or batch).

Always explicit offsets: the no-argument `commit()` commits every position the consumer has
fetched, which would skip records that are still being retried (seed-lessons.md #1, #7).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Collection, Iterable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError
from faststream.kafka.message import FakeConsumer

__all__ = (
    "CommitWindow",
    "Commits",
    "commit_records",
    "first_offsets",
    "is_fake",
    "next_offsets",
    "seek_back",
)

log = logging.getLogger(__name__)


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


class CommitWindow:
    """Coalesces the commits of one consumer: flushed every `every` outcomes or `interval_s`.

    Safe with dedup only: "done" is recorded in Redis before the commit, so records whose commit
    was still pending when the process died come again and are skipped as duplicates. Without
    dedup they would be processed again. Flushed before every seek (a redelivery never rewinds
    past a pending commit), on request (`add(..., flush=True)`, e.g. after a DLQ write), for the
    revoked partitions on a rebalance (`flush(partitions)`), and on close.
    """

    __slots__ = ("_consumer", "_count", "_every", "_interval_s", "_lock", "_pending", "_timer")

    def __init__(self, consumer: Any, *, every: int, interval_s: float) -> None:
        self._consumer = consumer
        self._every = every
        self._interval_s = interval_s
        self._pending: dict[TopicPartition, int] = {}
        self._count = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None

    async def add(self, records: Iterable[ConsumerRecord[Any, Any]], *, flush: bool = False) -> None:
        pending = self._pending
        for tp, offset in next_offsets(records).items():
            pending[tp] = max(pending.get(tp, 0), offset)
        self._count += 1
        if flush or self._count >= self._every:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._flush_later)

    async def flush(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Commit what is pending, or only what is pending for `partitions`."""
        if partitions is None:
            offsets, self._pending = self._pending, {}
        else:
            offsets = {tp: self._pending.pop(tp) for tp in partitions if tp in self._pending}
        if not self._pending:
            self._count = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if not offsets:
            return
        # One commit at a time, so an older set of offsets never lands after a newer one.
        async with self._lock:
            await self._commit(offsets)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except IllegalStateError:
            # A record finished after its partition moved to another member (its new owner
            # reads it again; dedup skips it): commit the partitions this consumer still owns.
            owned = self._consumer.assignment()
            kept = {tp: offset for tp, offset in offsets.items() if tp in owned}
            if len(kept) == len(offsets):
                raise
            if kept:
                await self._consumer.commit(kept)

    def _flush_later(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("coalesced commit failed (%s: %s); the records come again", type(exc).__name__, exc)


class Commits:
    """Every consumer's commits under one error routing: at once, or through a `CommitWindow` each.

    `drain()` (before the broker stops) flushes and makes every later outcome commit at once,
    while the consumers are still group members; `close()` (after) flushes what is left.
    """

    def __init__(self, *, every: int, interval_s: float) -> None:
        self.every = every
        self.interval_s = interval_s
        self._windows: weakref.WeakKeyDictionary[Any, CommitWindow] = weakref.WeakKeyDictionary()
        self._draining = False

    async def commit(
        self, consumer: Any, records: tuple[ConsumerRecord[Any, Any], ...], *, flush: bool = False
    ) -> None:
        """Commit `records` now, or through the consumer's window; `flush` empties the window too."""
        if self.every == 1 or is_fake(consumer):
            await commit_records(consumer, records)
            return
        window = self._windows.get(consumer)
        if window is None:
            window = self._windows[consumer] = CommitWindow(
                consumer, every=self.every, interval_s=self.interval_s
            )
        await window.add(records, flush=flush or self._draining)

    async def flush_partitions(self, partitions: Collection[TopicPartition]) -> None:
        """Commit the pending offsets of revoked `partitions`; aiokafka still accepts them there."""
        for window in list(self._windows.values()):
            try:
                await window.flush(partitions)
            except Exception as exc:  # the new owner reads them again; dedup skips what was done
                log.warning("commit on partition revoke failed (%s: %s)", type(exc).__name__, exc)

    async def seek_back(self, consumer: Any, records: tuple[ConsumerRecord[Any, Any], ...]) -> None:
        window = self._windows.get(consumer) if not is_fake(consumer) else None
        if window is not None:
            await window.flush()  # what was processed before this record stays committed
        seek_back(consumer, records)

    async def drain(self) -> None:
        self._draining = True
        await self._flush_all("commit before shutdown")

    async def close(self) -> None:
        await self._flush_all("final commit")
        self._draining = False

    async def _flush_all(self, what: str) -> None:
        for window in list(self._windows.values()):
            try:
                await window.flush()
            except Exception as exc:  # the consumer may be gone already; the records come again
                log.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)
