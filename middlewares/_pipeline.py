"""`Pipeline`: many messages of one subscriber in flight at once, each key's handlers in order.

FastStream's single-message subscriber awaits the whole processing of a record before it fetches
the next, so every Redis claim, done marker and output ack is paid in sequence. The pipeline
replaces the subscriber's `consume_one` hook: each record is admitted in fetch order (at most
`lookahead` at a time; the fetch loop waits when that many are in flight), gets a `Ticket`, and is
processed by FastStream in its own task. Everything before the handler (parse, envelope, dedup
claim) and after it (done marker, commit) overlaps across records, so Redis calls of records in
flight share one round trip. Only the handler itself is gated (`gate`, between dedup and
outputs): a record's handler starts after the previous record with the same ordering key ended,
and at most `concurrency` records are between their handler's start and their done marker (the
honest window: a crash repeats at most that many handlers). The ordering key is the partition
when `concurrency` is 1 (Kafka's own order) and (partition, record key) otherwise, so different
keys of one partition run concurrently and a key being retried holds only its own later records.

Commit safety: the record's commit-window claim is taken at admission, in fetch order, so a
commit never passes a record that was fetched but has not begun. A record sought back to (error
routing's redeliver) supersedes the records of its partition admitted after it that have not
started their handler: they end without an outcome, keeping commits below them, and are read
again after the seek, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from alpha_streaming._errors import ConfigError
from middlewares._batch_lane import BatchLane, batch_subscriber
from middlewares._gate import TICKET_ATTRIBUTE, Barrier, GateMiddleware, Ticket

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

    from middlewares._low_water import Claim

__all__ = ("Pipeline", "checked_concurrency")

log = logging.getLogger(__name__)

# Records admitted ahead of the running handlers: enough to fill a Redis round trip and the
# handlers' slots with distinct keys; each holds a dedup lease while it waits (renewed; after a
# crash it expires, and its new owner waits that long for it).
MIN_LOOKAHEAD = 64
LOOKAHEAD_PER_SLOT = 4
# Once the lookahead is full, admission resumes when this share of it is free again: the records
# admitted then start in one loop turn, so their dedup claims share one Redis call. Refilled one
# record at a time, each claim was a call of its own (at `concurrency=1`, two calls per record).
REFILL_SHARE = 4
# How long one fetch waits for the first record (it takes everything fetched by then: a bounded
# amount per partition, `max_partition_fetch_bytes`).
FETCH_WAIT_MS = 500


class Pipeline:
    """The tier's pipelined subscribers: one `_Lane` per subscriber, and the handler gate."""

    def __init__(
        self,
        *,
        begin: Callable[[Any, Collection[ConsumerRecord[Any, Any]]], Claim | None],
        barrier: Barrier | None = None,
    ) -> None:
        """`begin(consumer, records)` takes records into the commit window (error routing's);
        `barrier` holds handler starts while a transaction commits (exactly-once)."""
        self._begin = begin
        self.barrier = barrier
        self._lanes: dict[Any, _Lane] = {}
        self._batches: dict[Any, BatchLane] = {}
        self._concurrency: dict[Any, int] = {}
        self.gate = GateMiddleware()

    def set_concurrency(self, subscriber: Any, concurrency: int) -> None:
        checked_concurrency(concurrency)
        if not _pipelinable(subscriber):
            raise ConfigError(
                f"concurrency applies to single-message subscribers without FastStream's max_workers, "
                f"not to {type(subscriber).__name__}"
            )
        self._concurrency[subscriber] = concurrency

    def attach(self, subscriber: Any, default: int) -> None:
        """Pipeline `subscriber` (once; a restarted app keeps its lane)."""
        if batch_subscriber(subscriber) and self.barrier is None and subscriber not in self._batches:
            # (exactly-once: a transaction's batches are committed by the transaction, not overlapped)
            batches = self._batches[subscriber] = BatchLane(subscriber, self._begin)
            subscriber.consume_one = batches.admit
            return
        if subscriber in self._lanes or not _pipelinable(subscriber):
            return
        lane = _Lane(subscriber, self._concurrency.get(subscriber, default), self._begin)
        lane.barrier = self.barrier
        self._lanes[subscriber] = lane
        subscriber.consume_one = lane.admit
        subscriber.get_msg = lane.next_record

    def attached(self, subscriber: Any) -> bool:
        return subscriber in self._lanes

    def supersede(self, tp: tuple[str, int], offset: int) -> None:
        """Records of `tp` admitted past `offset` that did not start are read again (after a seek to
        `offset + 1`); records fetched before that seek are not admitted (exactly-once abort)."""
        for lane in self._lanes.values():
            lane.supersede(tp, offset)
            lane.rewound[tp] = offset + 1

    async def settle(self, partitions: Collection[TopicPartition], timeout_s: float) -> None:
        """Before a rebalance moves `partitions`: handlers under way finish (bounded); records that
        did not reach their handler are left to the new owner (neither run nor dead-lettered here)."""
        wanted = {(tp.topic, tp.partition) for tp in partitions}
        for lane in self._lanes.values():
            lane.gone |= wanted
            lane.forget(wanted)
            lane.leave_unstarted(lambda tp: tp in wanted)
            for tp in wanted:  # assigned again, a partition is read from its last commit
                lane.rewound.pop(tp, None)
        tasks = [t.task for lane in self._lanes.values() for t in lane.tickets if t.tp in wanted]
        tasks += [task for batches in self._batches.values() for task in batches.tasks]
        await _wait([task for task in tasks if task is not None], timeout_s, "revoked partitions")
        for lane in self._lanes.values():
            for ticket in lane.tickets:
                if ticket.tp in wanted:
                    # Whoever reads the partition next starts from its last commit: what these
                    # records decide later (a commit, a seek back) belongs to an old assignment.
                    ticket.go_stale()

    def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """`partitions` are this member's again: their records are admitted."""
        back = {(tp.topic, tp.partition) for tp in partitions}
        for lane in self._lanes.values():
            lane.gone -= back
            for tp in back:  # read from its last commit: a seek made before the rebalance is void
                lane.rewound.pop(tp, None)

    async def drain(self, timeout_s: float) -> None:
        """Admit nothing more; handlers under way finish (bounded) before the broker stops, records
        that did not reach their handler are read again after a restart."""
        for lane in self._lanes.values():
            lane.closing = True
            lane.fetched.clear()
            lane.rewound.clear()
            lane.leave_unstarted(lambda tp: True)
        for batches in self._batches.values():
            batches.closing = True
        await _wait(self._tasks(), timeout_s, "shutdown")

    async def close(self) -> None:
        """Cancel what still runs (it is read again: never committed) and forget the lanes."""
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            lane.closing = False
        for batches in self._batches.values():
            batches.closing = False

    def _tasks(self) -> list[asyncio.Task[None]]:
        tasks = [task for lane in self._lanes.values() for task in lane.tasks]
        return tasks + [task for batches in self._batches.values() for task in batches.tasks]


def checked_concurrency(concurrency: int) -> int:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    return concurrency


def _pipelinable(subscriber: Any) -> bool:
    """FastStream's plain single-message Kafka subscriber (its loop calls `consume_one`)."""
    kind = type(subscriber).__name__
    return kind == "DefaultSubscriber" and hasattr(subscriber, "consume_one")


async def _wait(tasks: list[asyncio.Task[None]], timeout_s: float, why: str) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    if pending:
        log.warning(
            "%d record(s) still in flight after %.0f s (%s); they are not committed and will be read again",
            len(pending),
            timeout_s,
            why,
        )


class _Lane:
    """One subscriber's records in flight: admission, ordering chains, handler slots."""

    def __init__(self, subscriber: Any, concurrency: int, begin: Callable[..., Claim | None]) -> None:
        self.subscriber = subscriber
        self.consume = subscriber.consume
        self.by_key = concurrency > 1
        self.slots = asyncio.Semaphore(concurrency)
        lookahead = max(MIN_LOOKAHEAD, LOOKAHEAD_PER_SLOT * concurrency)
        self.room = Room(lookahead, refill=lookahead // REFILL_SHARE)
        self.last: dict[Any, Ticket] = {}
        self.tickets: set[Ticket] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.fetched: deque[ConsumerRecord[Any, Any]] = deque()
        self.gone: set[tuple[str, int]] = set()
        """Partitions revoked and not assigned again: their records are not admitted."""
        self.closing = False
        self.barrier: Barrier | None = None
        self.rewound: dict[tuple[str, int], int] = {}
        """Partitions sought back to an offset: records past it fetched before the seek are dropped."""
        self._begin = begin

    async def next_record(self, consumer: AIOKafkaConsumer) -> ConsumerRecord[Any, Any] | None:
        """The subscriber's `get_msg`: records of every fetched partition, interleaved.

        `getone()` hands out one partition's fetched records before the next partition's, so a
        backlog would fill the lookahead with the few keys of one partition; one `getmany()`
        per fetch, taken round-robin over partitions, keeps every partition's keys in flight.
        """
        if not self.fetched:
            batches = await consumer.getmany(timeout_ms=FETCH_WAIT_MS)
            for records in itertools.zip_longest(*batches.values()):
                self.fetched.extend(r for r in records if r is not None)
            if not self.fetched:
                return None
        return self.fetched.popleft()

    def forget(self, tps: set[tuple[str, int]], after: int = -1) -> None:
        """Drop fetched, not yet admitted records of `tps` (past offset `after`): they are read again."""
        kept = (r for r in self.fetched if (r.topic, r.partition) not in tps or r.offset <= after)
        self.fetched = deque(kept)

    async def admit(self, record: ConsumerRecord[Any, Any]) -> None:
        """The subscriber's `consume_one`: admit `record` in fetch order, process it in a task."""
        if self.closing:
            await asyncio.Event().wait()  # the fetch loop stays here until the subscriber stops it
        await self.room.acquire()
        tp = (record.topic, record.partition)
        if self.closing or tp in self.gone:
            # Fetched before a shutdown or a revoke that came while it waited for room: never
            # begun, so no commit passes it; the partition's next reader gets it.
            self.room.release()
            return
        if self.rewound and (start := self.rewound.get(tp)) is not None:
            if record.offset > start:  # fetched before the seek back: read again after it
                self.room.release()
                return
            del self.rewound[tp]
        key: Any = (tp, record.key) if self.by_key and record.key is not None else tp
        ticket = Ticket(self, key, tp, record.offset, self.last.get(key))
        self.last[key] = ticket
        ticket.claim = self._begin(self.subscriber.consumer, (record,))
        setattr(record, TICKET_ATTRIBUTE, ticket)
        self.tickets.add(ticket)
        task = asyncio.get_running_loop().create_task(self._process(record, ticket))
        ticket.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _process(self, record: ConsumerRecord[Any, Any], ticket: Ticket) -> None:
        try:
            await self.consume(record)
        finally:
            ticket.release()
            self.tickets.discard(ticket)
            self.room.release()
            claim = ticket.claim
            if claim is not None and not ticket.claim_taken:  # processing never began (e.g. stopped first)
                claim.window.unfinished(claim)

    def leave_unstarted(self, which: Callable[[tuple[str, int]], bool]) -> None:
        """Records of the partitions `which` picks that did not reach their handler end unprocessed."""
        for ticket in self.tickets:
            if not ticket.entered and which(ticket.tp):
                ticket.superseded = True

    def supersede(self, tp: tuple[str, int], offset: int) -> None:
        """The consumer seeks back to `offset` of `tp`: what was read past it is read again."""
        self.forget({tp}, after=offset)
        if tp not in self.gone:  # revoked meanwhile: no seek follows, the next owner reads on
            # Records past it still on their way to `admit` (fetched before the seek) are dropped.
            self.rewound[tp] = min(offset, self.rewound.get(tp, offset))
        for ticket in self.tickets:
            if ticket.tp == tp and ticket.offset > offset:
                ticket.go_stale()
                if not ticket.entered:
                    ticket.superseded = True


class Room:
    """The lookahead's free places; once full, it opens again only when `refill` places are free."""

    __slots__ = ("_opened", "_refill", "free")

    def __init__(self, size: int, *, refill: int = 1) -> None:
        self.free = size
        self._refill = max(1, refill)
        self._opened: asyncio.Event | None = None

    async def acquire(self) -> None:
        while self._opened is not None:  # filled up, and not refilled yet
            await self._opened.wait()
        self.free -= 1
        if self.free == 0:
            self._opened = asyncio.Event()

    def release(self) -> None:
        self.free += 1
        if self._opened is not None and self.free >= self._refill:
            self._opened.set()
            self._opened = None
