"""`CommitWindow`: one consumer's offset commits, off the message path, by per-partition low-water mark.

A record is *in flight* from the moment error routing takes it until its outcome is final (its
outputs acknowledged, its done marker written, or its DLQ copy acknowledged). Per partition the
window keeps the offsets in flight and the highest finished offset + 1; the committable offset
(the low-water mark) is the lowest offset still in flight, else the highest finished + 1, never
past a *hold*: the offset of a record that ended unfinished (redelivery, cancelled handler) and
was sought back to, until a record at or after it is taken again (after a seek, a consumer hands
out a partition's records from that offset on, in order). A seek back also takes back what
finished past the offset (it is read again), and the outcome of a record read before the seek is
abandoned, not counted: its copy read again decides. So a commit never passes an unfinished
offset, whatever order outcomes finish in.

Commits go out in the background: after `every` finished outcomes or `interval_s` after the first
one, one commit at a time (a newer set of offsets never lands before an older one). A failed
background commit is logged and retried by the next one; nothing is lost, the records are only read
again. Callers await `flush()` where it matters: before a seek, after a dead-letter write, on
partition revoke and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

__all__ = ("Claim", "CommitWindow")

log = logging.getLogger(__name__)


class _Partition:
    """Low-water bookkeeping of one assigned partition (dropped when it is revoked)."""

    __slots__ = ("committed", "finished", "hold", "in_flight", "sought", "tp")

    def __init__(self, tp: TopicPartition, first: int) -> None:
        self.tp = tp
        self.in_flight: dict[int, int] = {}
        # The first record handed out is where the group's position was: nothing below it is ours.
        self.finished = first
        self.committed = first
        self.hold: int | None = None
        self.sought: int | None = None
        """Where the consumer was sought back to, until a record from there on is taken."""

    def mark(self) -> int:
        """The committable offset: every record below it is finished."""
        mark = min(self.in_flight) if self.in_flight else self.finished
        hold = self.hold
        return mark if hold is None or hold > mark else hold


class Claim:
    """The records of one message, in flight in `window` (per record: its partition, its offset)."""

    __slots__ = ("entries", "stale", "window")

    def __init__(self, window: CommitWindow, entries: list[tuple[_Partition, int]]) -> None:
        self.window = window
        self.entries = entries
        self.stale = False
        """Read before a seek back below it (or before its partition's revoke settled): the copy
        read again decides, so this claim's end neither counts, holds nor seeks."""


class CommitWindow:
    """Every partition of one consumer: what is in flight, what is finished, what was committed."""

    __slots__ = (
        "_again",
        "_commit_hook",
        "_consumer",
        "_count",
        "_every",
        "_interval_s",
        "_lock",
        "_partitions",
        "_task",
        "_timer",
    )

    def __init__(
        self,
        consumer: Any,
        *,
        every: int,
        interval_s: float,
        commit: Callable[[CommitWindow, dict[TopicPartition, int]], Awaitable[None]] | None = None,
    ) -> None:
        """`commit` replaces the consumer's offset commit (exactly-once: a Kafka transaction)."""
        self._consumer = consumer
        self._commit_hook = commit
        self._every = every
        self._interval_s = interval_s
        self._partitions: dict[str, dict[int, _Partition]] = {}
        self._count = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def begin(self, records: Iterable[ConsumerRecord[Any, Any]]) -> Claim:
        """Take `records` in flight: no commit passes them until `finish` or `unfinished`."""
        entries = []
        for record in records:
            by_number = self._partitions.get(record.topic)
            if by_number is None:
                by_number = self._partitions[record.topic] = {}
            offset = record.offset
            part = by_number.get(record.partition)
            if part is None:
                part = by_number[record.partition] = _Partition(
                    TopicPartition(record.topic, record.partition), offset
                )
            else:
                if part.hold is not None and offset >= part.hold:
                    part.hold = None  # the consumer reads on from the sought-back offset
                if part.sought is not None and offset >= part.sought:
                    part.sought = None
            part.in_flight[offset] = part.in_flight.get(offset, 0) + 1
            entries.append((part, offset))
        return Claim(self, entries)

    def finish(self, claim: Claim) -> bool:
        """The claim's records are done: count them; True when a commit is due now."""
        if claim.stale:
            _leave_all(claim)
            return False
        for part, offset in claim.entries:
            _leave(part, offset)
            if offset >= part.finished:
                part.finished = offset + 1
        self._count += 1
        if self._count >= self._every:
            return True
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self.flush_soon)
        return False

    def unfinished(self, claim: Claim) -> None:
        """The claim's records ended without an outcome: hold commits at each until it is read again."""
        if claim.stale:
            _leave_all(claim)
            return
        for part, offset in claim.entries:
            _leave(part, offset)
            if part.hold is None or offset < part.hold:
                part.hold = offset

    def sought(self, tp: TopicPartition, offset: int) -> None:
        """The consumer was sought back to `offset`: what finished past it (e.g. a duplicate that
        overtook it) no longer counts until it is read again, so a commit cannot skip the records
        in between."""
        part = self._partitions.get(tp.topic, {}).get(tp.partition)
        if part is not None:
            part.finished = min(part.finished, offset)
            if part.hold is None or offset < part.hold:
                part.hold = offset
            if part.sought is None or offset < part.sought:
                part.sought = offset

    def sought_below(self, tp: TopicPartition, offset: int) -> bool:
        """`tp` was sought back below `offset` and has not been read from there yet."""
        part = self._partitions.get(tp.topic, {}).get(tp.partition)
        return part is not None and part.sought is not None and part.sought < offset

    def flush_soon(self) -> None:
        """Commit in the background (one commit at a time; a later request runs once more after it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._background())

    async def flush(
        self, partitions: Collection[TopicPartition] | None = None, *, drop: bool = False
    ) -> None:
        """Commit the low-water marks (of `partitions` only, if given); `drop` forgets those partitions."""
        if partitions is None:
            self._count = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        # One commit at a time, and the marks read inside the lock, so commits only move forward.
        async with self._lock:
            chosen = [
                part
                for by_number in self._partitions.values()
                for part in by_number.values()
                if partitions is None or part.tp in partitions
            ]
            if drop:
                for part in chosen:
                    del self._partitions[part.tp.topic][part.tp.partition]
            offsets = {part.tp: mark for part in chosen if (mark := part.mark()) > part.committed}
            if offsets:
                await self._commit(offsets)
                for part in chosen:
                    if part.tp in offsets:  # a transactional commit may have gone further
                        part.committed = max(part.committed, offsets[part.tp])

    async def wait_idle(self) -> None:
        """Let a background commit that is under way finish (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _background(self) -> None:
        while True:
            self._again = False
            try:
                await self.flush()
            except Exception as exc:  # the next commit carries these offsets too; at worst they are re-read
                log.warning(
                    "background commit failed (%s: %s); retried with the next one", type(exc).__name__, exc
                )
            if not self._again:
                break
        if self._count and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self.flush_soon)

    @property
    def consumer(self) -> Any:
        return self._consumer

    @property
    def group_id(self) -> str:
        return str(self._consumer._group_id)

    def pending(self) -> dict[TopicPartition, int]:
        """The low-water marks above the last commit (read by a transactional commit)."""
        return {
            part.tp: mark
            for by_number in self._partitions.values()
            for part in by_number.values()
            if (mark := part.mark()) > part.committed
        }

    def committed_to(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            part = self._partitions.get(tp.topic, {}).get(tp.partition)
            if part is not None and offset > part.committed:
                part.committed = offset

    def rolled_back(self) -> dict[TopicPartition, int]:
        """An aborted transaction: what finished since the last commit is undone (held at the
        committed offset until read again); returns where each such partition must seek to."""
        back = {}
        for by_number in self._partitions.values():
            for part in by_number.values():
                if part.finished > part.committed or part.mark() > part.committed:
                    part.finished = part.committed
                    if part.hold is None or part.committed < part.hold:
                        part.hold = part.committed
                    back[part.tp] = part.committed
        return back

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._commit_hook is not None:
            await self._commit_hook(self, offsets)
            return
        try:
            await self._consumer.commit(offsets)
        except IllegalStateError:
            # A partition moved to another member without our revoke listener (its new owner reads
            # on from its last commit): forget it, commit the partitions this consumer still owns.
            owned = self._consumer.assignment()
            kept = {tp: offset for tp, offset in offsets.items() if tp in owned}
            if len(kept) == len(offsets):
                raise
            for tp in offsets.keys() - kept.keys():
                self._partitions.get(tp.topic, {}).pop(tp.partition, None)
            if kept:
                await self._consumer.commit(kept)


def _leave_all(claim: Claim) -> None:
    for part, offset in claim.entries:
        _leave(part, offset)


def _leave(part: _Partition, offset: int) -> None:
    left = part.in_flight.pop(offset, 1) - 1
    if left:
        part.in_flight[offset] = left
