"""`PendingCommits`: the direct consumer's per-record commits, recorded at once, committed in the background.

A broker commit costs a round trip (~5-10 ms on Kafka 4); awaiting one per record caps a consumer
at ~170 records/s. So `commit(record)` only records `record.offset + 1` for its partition (a
partition's offset only moves forward), and one background task commits what is recorded after
`every` records or `interval_s` after the first one, one commit at a time so a newer offset never
lands before an older one. Exactness is kept: only recorded offsets are ever committed.

Failures: a failed background commit is logged and its offsets stay recorded for the next commit.
Offsets of partitions this consumer no longer owns cannot be committed by it any more (the new
owner reads those records again): they are dropped, and the next explicit `flush()` raises a
`KafkaClientError` saying so. So every recorded offset ends up committed, or a flush says it was not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from alpha_streaming._clients._errors import kafka_errors
from alpha_streaming._errors import KafkaClientError

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

__all__ = ("COMMIT_EVERY", "COMMIT_INTERVAL_S", "PendingCommits")

log = logging.getLogger(__name__)

# 100 records per ~7-10 ms commit makes it ~0.1 ms a record; a crash repeats at most ~100 records.
COMMIT_EVERY = 100
COMMIT_INTERVAL_S = 0.5

Key = tuple[str, int]


class PendingCommits:
    """Recorded next offsets per partition, and the background task that commits them."""

    __slots__ = (
        "_again",
        "_committed",
        "_consumer",
        "_count",
        "_every",
        "_interval_s",
        "_lock",
        "_lost",
        "_pending",
        "_task",
        "_timer",
    )

    def __init__(self, consumer: Callable[[], AIOKafkaConsumer], *, every: int, interval_s: float) -> None:
        self._consumer = consumer  # the started aiokafka consumer, or ClientStateError
        self._every = every
        self._interval_s = interval_s
        self._pending: dict[Key, int] = {}  # recorded, not yet committed (may lag `_committed`)
        self._committed: dict[Key, int] = {}  # last offset this consumer committed, per partition
        self._lost: set[str] = set()  # partitions whose recorded offsets could not be committed
        self._count = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def record(self, key: Key, next_offset: int) -> None:
        """Remember `next_offset` for partition `key` (forward only); schedule a background commit."""
        pending = self._pending
        if next_offset > pending.get(key, -1):
            pending[key] = next_offset
        self._count += 1
        if self._count >= self._every:
            self._flush_soon()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._flush_soon)

    def merge(self, offsets: dict[Key, int]) -> None:
        """Record several next offsets at once (forward only), leaving the commit to the caller."""
        pending = self._pending
        for key, next_offset in offsets.items():
            if next_offset > pending.get(key, -1):
                pending[key] = next_offset

    async def flush(self) -> dict[TopicPartition, int]:
        """Commit everything recorded now; raise if it fails or if recorded offsets were dropped."""
        committed = await self._commit()
        if self._lost:
            lost, self._lost = sorted(self._lost), set()
            raise KafkaClientError(
                f"commit: offsets recorded for {', '.join(lost)} were not committed: the partitions "
                "moved to another member of the group, which reads those records again"
            )
        return committed

    async def release(self, revoked: Collection[TopicPartition]) -> None:
        """Before `revoked` partitions go: commit what was recorded, then forget them."""
        try:
            await self._commit()
        except Exception as exc:  # the new owner reads from the last commit: repeated, not lost
            log.warning("commit on partition revoke failed (%s: %s)", type(exc).__name__, exc)
        for tp in revoked:
            key = (tp.topic, tp.partition)
            self._committed.pop(key, None)
            if self._pending.pop(key, None) is not None:
                self._lost.add(f"{tp.topic}[{tp.partition}]")

    async def close(self) -> Exception | None:
        """Stop the timer, let a background commit finish, then commit the rest; the error, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.flush()
        except Exception as exc:
            return exc
        finally:
            self._pending.clear()
            self._committed.clear()
        return None

    def _flush_soon(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._again = True  # one more commit after the one under way
            return
        self._task = asyncio.get_running_loop().create_task(self._background())

    async def _background(self) -> None:
        while True:
            self._again = False
            try:
                await self._commit()
            except Exception as exc:  # kept recorded: the next commit carries these offsets too
                log.warning("background commit failed (%s: %s); retried later", type(exc).__name__, exc)
            if not self._again:
                break
        if self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._flush_soon)

    async def _commit(self) -> dict[TopicPartition, int]:
        # One commit at a time, the offsets taken inside the lock: commits only move forward.
        async with self._lock:
            self._count = 0
            if self._timer is not None:  # what it would commit goes now
                self._timer.cancel()
                self._timer = None
            if not self._pending:
                return {}
            pending, self._pending = self._pending, {}
            done = self._committed
            offsets = {TopicPartition(*key): nxt for key, nxt in pending.items() if nxt > done.get(key, -1)}
            if not offsets:
                return {}
            try:
                await self._send(offsets)
            except BaseException:
                for tp, nxt in offsets.items():  # back for the next commit, still forward only
                    key = (tp.topic, tp.partition)
                    if nxt > self._pending.get(key, -1):
                        self._pending[key] = nxt
                raise
            for tp, nxt in offsets.items():
                done[(tp.topic, tp.partition)] = nxt
            return offsets

    async def _send(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit `offsets`; those of partitions no longer owned are dropped (and reported)."""
        consumer = self._consumer()
        with kafka_errors("commit"):
            try:
                await consumer.commit(offsets)
                return
            except IllegalStateError:
                owned = consumer.assignment()
            for tp in [tp for tp in offsets if tp not in owned]:
                del offsets[tp]
                self._lost.add(f"{tp.topic}[{tp.partition}]")
            if offsets:
                await consumer.commit(offsets)
