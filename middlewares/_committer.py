"""Every consumer's offset commits under one error routing: explicit offsets, never past unfinished work.

Always explicit offsets: the no-argument `commit()` commits every position the consumer has
fetched, which would skip records that are still being retried (seed-lessons.md #1, #7). Each
consumer gets a `CommitWindow` (`_low_water`), which commits per-partition low-water marks in the
background, also without dedup: Kafka's own at-least-once, where a crash repeats at most what
finished since the last commit (`every` outcomes or `interval_s`, whichever came first). With
`every=1` each outcome is committed before the consumer moves on (a broker round trip each).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka.message import FakeConsumer

from middlewares._low_water import Claim, CommitWindow

__all__ = ("COMMIT_EVERY", "Claim", "CommitWindow", "Commits", "first_offsets", "is_fake")

log = logging.getLogger(__name__)

# Outcomes per background commit: a Kafka 4 commit costs ~7-10 ms, so 100 makes it ~0.1 ms a
# message, and a crash repeats at most ~100 records per consumer (bench/README.md, "commits").
COMMIT_EVERY = 100


def is_fake(consumer: object) -> bool:
    """FastStream's in-memory test broker hands out a consumer that cannot commit offsets."""
    return consumer is None or isinstance(consumer, FakeConsumer)


def first_offsets(records: Collection[ConsumerRecord[Any, Any]]) -> dict[TopicPartition, int]:
    """Per partition, the earliest record: where to seek so none of them is skipped."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        current = offsets.get(tp)
        offsets[tp] = record.offset if current is None else min(current, record.offset)
    return offsets


class Commits:
    """One `CommitWindow` per consumer; `drain()` before the broker stops, `close()` after.

    `drain()` commits what is finished and makes every later outcome commit at once, while the
    consumers are still group members (in-flight handlers finish during the broker's stop).
    """

    def __init__(self, *, every: int, interval_s: float) -> None:
        self.every = every
        self.interval_s = interval_s
        self.commit: Callable[[CommitWindow, dict[TopicPartition, int]], Awaitable[None]] | None = None
        """Replaces the consumer commit (exactly-once, `_transactions`): then no record awaits a
        commit itself, every commit goes out in the background."""
        self._windows: weakref.WeakKeyDictionary[Any, CommitWindow] = weakref.WeakKeyDictionary()
        # The window of the consumer seen last: a single-message subscriber asks for it per message.
        self._last: tuple[Any, CommitWindow] | None = None
        self._draining = False

    def begin(self, consumer: Any, records: Collection[ConsumerRecord[Any, Any]]) -> Claim | None:
        """Take `records` in flight on `consumer` (None for the test broker, which cannot commit)."""
        last = self._last
        if last is not None and last[0] is consumer:
            return last[1].begin(records)
        if is_fake(consumer):
            return None
        window = self._windows.get(consumer)
        if window is None:
            window = self._windows[consumer] = CommitWindow(
                consumer, every=self.every, interval_s=self.interval_s, commit=self.commit
            )
        self._last = (consumer, window)
        return window.begin(records)

    async def finish(self, claim: Claim | None, *, flush: bool = False) -> None:
        """The records are done: committed in the background, or now with `flush` (or while draining)."""
        if claim is None:
            return
        window = claim.window
        if self.commit is not None:  # a transactional commit waits for records: never inside one
            if window.finish(claim) or flush or self._draining:
                window.flush_soon()
            return
        if window.finish(claim):
            if flush or self._draining or self.every == 1:
                await window.flush()
            else:
                window.flush_soon()
        elif flush or self._draining:
            await window.flush()

    async def rewind(
        self, consumer: Any, claim: Claim | None, records: Collection[ConsumerRecord[Any, Any]]
    ) -> None:
        """The records stay unfinished: commit what is finished below them, then seek back to them.

        The seek is what lets a later record lift the hold (`CommitWindow.begin`), so it is made
        whatever the commit did. A stale claim never seeks: its partition is read again from an
        earlier offset already (or from its last commit, after a rebalance during the commit),
        and a seek to it would skip the records in between. For the same reason no partition is
        sought forward past a seek back not read from yet (a batch behind one sought back).
        """
        if claim is None:
            return
        window = claim.window
        offsets = {
            tp: offset for tp, offset in first_offsets(records).items() if not window.sought_below(tp, offset)
        }
        window.unfinished(claim)
        if claim.stale:
            return
        try:
            if self.commit is None:
                await window.flush()
        except Exception as exc:  # the hold keeps later commits below the records
            log.warning("commit before a seek failed (%s: %s)", type(exc).__name__, exc)
        if claim.stale:
            return
        try:
            for tp, offset in offsets.items():
                consumer.seek(tp, offset)
                window.sought(tp, offset)
        except Exception as exc:  # e.g. the consumer stops; the hold still keeps commits below them
            log.warning("seek back failed (%s: %s)", type(exc).__name__, exc)

    async def flush_partitions(self, partitions: Collection[TopicPartition]) -> None:
        """Commit the finished work of revoked `partitions` and forget them; aiokafka still accepts it."""
        for window in list(self._windows.values()):
            try:
                await window.flush(partitions, drop=True)
            except Exception as exc:  # the new owner reads from the last commit: repeated, not lost
                log.warning("commit on partition revoke failed (%s: %s)", type(exc).__name__, exc)

    def windows(self) -> list[CommitWindow]:
        return list(self._windows.values())

    async def drain(self) -> None:
        self._draining = True
        await self._flush_all("commit before shutdown")

    async def close(self) -> None:
        await self._flush_all("final commit")
        self._draining = False
        self._last = None

    async def _flush_all(self, what: str) -> None:
        for window in list(self._windows.values()):
            await window.wait_idle()
            try:
                await window.flush()
            except Exception as exc:  # the consumer may be gone already; the records come again
                log.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)
