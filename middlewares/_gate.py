"""The pipeline's gate: a record's turn among its key's records, and its handler slot.

`Ticket`s are made by the pipeline (`_pipeline`) when it admits a record and ride on the record;
a batch's records carry its `BatchTurn` (`_batch_lane`); the gate middleware (between dedup and
outputs) makes the handler wait for the ticket's or the batch's turn;
error routing reads it too: the record's commit claim (`take_claim`), its turn before a
dead-letter write (`wait_turn`), and a seek-back that supersedes later records (`supersede_after`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage

if TYPE_CHECKING:
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

    from middlewares._low_water import Claim

__all__ = (
    "BATCH_ATTRIBUTE",
    "TICKET_ATTRIBUTE",
    "Barrier",
    "BatchTurn",
    "GateMiddleware",
    "Superseded",
    "Ticket",
    "done_written",
    "hold_slot_until_done",
    "supersede_after",
    "take_claim",
    "wait_turn",
)

TICKET_ATTRIBUTE = "_alpha_ticket"
BATCH_ATTRIBUTE = "_alpha_batch"


class Lane(Protocol):
    """What a ticket needs from its subscriber's lane."""

    slots: asyncio.Semaphore
    last: dict[Any, Ticket]
    barrier: Barrier | None

    def supersede(self, tp: tuple[str, int], offset: int) -> None: ...


class Barrier(Protocol):
    """Exactly-once (`_transactions`): handler starts wait while a transaction commits."""

    async def wait_open(self) -> None: ...

    def entered(self, ticket: object) -> None: ...

    def left(self, ticket: object) -> None: ...

    def check(self, ticket: Ticket) -> None: ...

    def failed(self, ticket: Ticket) -> None: ...


class Superseded(Exception):
    """An earlier record of the partition was sought back to: this one is read again after it.

    `seek`: the message must seek back to its own records too (a batch after one that was
    sought back: its other partitions were not)."""

    def __init__(self, message: str, *, seek: bool = False) -> None:
        super().__init__(message)
        self.seek = seek


class Ticket:
    """A record's place in its key's chain, and its handler slot once it entered the gate."""

    __slots__ = (
        "awaits_done",
        "claim",
        "claim_taken",
        "entered",
        "key",
        "lane",
        "offset",
        "prev",
        "released",
        "slot_held",
        "superseded",
        "task",
        "tp",
        "wake",
    )

    def __init__(self, lane: Lane, key: Any, tp: tuple[str, int], offset: int, prev: Ticket | None) -> None:
        self.lane = lane
        self.key = key
        self.tp = tp
        self.offset = offset
        self.prev = prev
        self.claim: Claim | None = None
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Future[None] | None = None
        self.entered = self.released = self.slot_held = self.superseded = self.awaits_done = False
        self.claim_taken = False
        """Error routing took `claim` (`take_claim`): the record's processing began."""

    @property
    def stale(self) -> bool:
        """Read before a seek back to an earlier record of its partition (`Claim.stale`)."""
        return self.claim is not None and self.claim.stale

    def go_stale(self) -> None:
        if self.claim is not None:
            self.claim.stale = True

    async def enter(self) -> None:
        """Wait for the previous record of the key to end, then for a handler slot."""
        prev, self.prev = self.prev, None
        if prev is not None and not prev.released:
            if prev.wake is None:
                prev.wake = asyncio.get_running_loop().create_future()
            await prev.wake
        barrier = self.lane.barrier
        if barrier is not None:
            await barrier.wait_open()
        if self.superseded:
            raise Superseded(f"offset {self.offset} of {self.tp[0]}[{self.tp[1]}] is read again")
        if barrier is not None:
            barrier.entered(self)  # no await since wait_open: no commit began in between
        await self.lane.slots.acquire()
        self.slot_held = self.entered = True

    def pass_turn(self) -> None:
        """The key's next record may run its handler (idempotent: on success, or at the end)."""
        if self.released:
            return
        self.released = True
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)
        if self.lane.last.get(self.key) is self:
            del self.lane.last[self.key]

    def handler_ended(self) -> None:
        """The handler succeeded: the key's next record may run; the slot is freed now unless
        dedup holds it until the done marker is written (`hold_slot_until_done`)."""
        self.pass_turn()
        if not self.awaits_done:
            self.release_slot()

    def release_slot(self) -> None:
        if self.slot_held:
            self.slot_held = False
            self.lane.slots.release()

    def release(self) -> None:
        """The record's processing ended, however it ended."""
        self.pass_turn()
        self.release_slot()
        if self.lane.barrier is not None:
            self.lane.barrier.left(self)


def _ticket_of(record: Any) -> Ticket | None:
    return getattr(record, TICKET_ATTRIBUTE, None)


def _turn_of(records: Collection[Any]) -> BatchTurn | None:
    """The batch turn riding on a batch's first record (None when not in a batch lane)."""
    return getattr(next(iter(records)), BATCH_ATTRIBUTE, None) if records else None


def take_claim(records: Collection[Any]) -> Claim | None:
    """The commit-window claim taken when the record or batch was admitted (None when not pipelined)."""
    holder: Ticket | BatchTurn | None = _ticket_of(next(iter(records))) if len(records) == 1 else None
    if holder is None:
        holder = _turn_of(records)
    if holder is None or holder.claim_taken:
        return None
    holder.claim_taken = True
    return holder.claim


async def wait_turn(records: Collection[Any]) -> None:
    """Before a pipelined record is dead-lettered: its key's earlier records go first (DLQ order)."""
    if len(records) == 1:
        ticket = _ticket_of(next(iter(records)))
        if ticket is not None and not ticket.entered:
            await ticket.enter()


def hold_slot_until_done(record: Any) -> None:
    """Dedup will write a done marker: until then the handler counts as in flight, so a crash
    repeats at most `concurrency` handlers, each once (the honest window)."""
    ticket = _ticket_of(record)
    if ticket is not None:
        ticket.awaits_done = True


def done_written(record: Any) -> None:
    """The done marker is written (or given up): the record's slot is free."""
    ticket = _ticket_of(record)
    if ticket is not None:
        ticket.release_slot()


def supersede_after(records: Collection[Any]) -> None:
    """`records` are sought back to: later admitted records of their partitions are read again too."""
    for record in records:
        ticket = _ticket_of(record)
        if ticket is not None and not ticket.stale:  # a stale one's partition was sought back below it
            ticket.lane.supersede(ticket.tp, ticket.offset)
    if (turn := _turn_of(records)) is not None:
        turn.sought_back = True


class BatchTurn:
    """A batch's place behind the earlier batches of its subscriber (`_batch_lane`).

    Its handler starts once the earlier batches' processing ended (done markers written: at most
    one batch handler is unconfirmed), and not at all if one of them was sought back after this
    batch was read: then this one seeks back to its own records and is read again after them."""

    __slots__ = ("claim", "claim_taken", "earlier", "handled", "sought_back", "task", "watched")

    def __init__(self, earlier: tuple[BatchTurn, ...], handled: asyncio.Future[None]) -> None:
        self.sought_back: bool = False
        self.earlier = earlier
        # A batch sought back before this one was read is no reason to supersede it: this one is
        # what the consumer read after that seek.
        self.watched = tuple(turn for turn in earlier if not turn.sought_back)
        self.handled = handled
        """Set when the handler succeeded (its outputs acknowledged): the next batch may be read."""
        self.task: asyncio.Task[None] | None = None
        self.claim: Claim | None = None
        self.claim_taken = False

    async def run(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        earlier, watched, self.earlier, self.watched = self.earlier, self.watched, (), ()
        for turn in earlier:
            if turn.task is not None and not turn.task.done():
                await asyncio.wait((turn.task,))  # its outcome is its own
        if any(turn.sought_back for turn in watched):
            self.sought_back = True
            raise Superseded("a batch before this one was sought back", seek=True)
        try:
            result = await call_next(msg)
        except AckMessage:
            self._handled()
            raise
        self._handled()
        return result

    def _handled(self) -> None:
        if not self.handled.done():
            self.handled.set_result(None)


class GateMiddleware:
    """Factory of the per-message gate; a record that was not pipelined passes straight through."""

    __slots__ = ()

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _Gate(msg, context=context)

    def __repr__(self) -> str:
        return "PipelineGate()"


class _Gate(BaseMiddleware[Any, Any]):
    __slots__ = ()

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        ticket = _ticket_of(raw)
        if ticket is None:
            turn = _turn_of(raw) if isinstance(raw, tuple | list) else None
            return await (call_next(msg) if turn is None else turn.run(call_next, msg))
        if not ticket.entered:  # a retry of this record keeps its turn and slot
            await ticket.enter()
        barrier = ticket.lane.barrier
        if barrier is not None:
            barrier.check(ticket)  # exactly-once: dead-letter a record its aborted batch gave up on
        try:
            result = await call_next(msg)
        except AckMessage:
            ticket.handler_ended()  # done (the handler's ack, or its outputs acknowledged)
            raise
        except Exception:
            if barrier is not None:
                barrier.failed(ticket)  # what the attempt published is in the open transaction
            raise
        ticket.handler_ended()
        return result
