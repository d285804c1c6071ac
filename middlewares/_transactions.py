"""Exactly-once Kafka → Kafka: one Kafka transaction per commit window's batch, not per message.

The windows (`_low_water`) decide when to commit; `Transactions` commits: the barrier stops new
handler starts, the started ones end, each consumer's group membership is checked (aiokafka's
TxnOffsetCommit carries no generation: a zombie must not commit partitions that moved), the
batch's unacknowledged sends are awaited, the offsets go into the transaction and it commits.
Anything else aborts it and the batch is redone: a failed handler attempt or commit, a lost
membership, an unacknowledged output, a handler still running at `DEADLINE_SHARE` of the
transaction timeout (aborted by us before Kafka would fence the producer). A fenced producer
stops the app (`on_fenced`). README, "Exactly-once (Kafka → Kafka)", has the semantics.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import errors as ak
from faststream.exceptions import RejectMessage

from alpha_streaming._errors import ConfigError
from middlewares._gate import Superseded

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer, TopicPartition

    from middlewares._gate import Ticket
    from middlewares._low_water import CommitWindow

__all__ = ("DEADLINE_SHARE", "MAX_STRIKES", "GivenUp", "TransactionAborted", "Transactions")

log = logging.getLogger(__name__)

DEADLINE_SHARE = 0.5
"""Of `transaction_timeout_ms`: when an open transaction with handlers still running is aborted."""
MAX_STRIKES = 2
"""A record whose handler outlives the deadline this many times is dead-lettered on the redo, so
it cannot stall its partition forever."""


class DeadlineExceeded(Exception):
    """The record's handler outlived its transaction's deadline on every try."""


class GivenUp(RejectMessage):
    """Dead-lettered at once: the batch that gave up on this record was aborted and is redone."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def __str__(self) -> str:
        return self.message


class _LostMembership(Exception):
    """A consumer of the batch is no longer in its group's current generation."""


class TransactionAborted(Exception):
    """The batch's transaction was aborted on purpose; its records are read again."""


class Transactions:
    """The open transaction of one broker's producer and the barrier before handler starts."""

    def __init__(self) -> None:
        self.producer_of: Callable[[], AIOKafkaProducer] | None = None
        """Set by the tier: the broker's transactional producer (exists once it is connected)."""
        self.windows: Callable[[], Iterable[CommitWindow]] = tuple
        """Every commit window of the tier (every consumer); set by the tier."""
        self.supersede: Callable[[tuple[str, int], int], None] = lambda tp, offset: None
        """Records of `tp` admitted past `offset` and not started are read again; set by the tier."""
        self.on_fenced: Callable[[], None] = lambda: None
        """Called once when the producer is fenced; `install` makes it stop the app."""
        self.fenced = False
        self.doomed = False
        """A handler attempt failed: what it published is in the open transaction, so it aborts."""
        self.given_up: dict[tuple[str, int, int], BaseException] = {}
        """Records dead-lettered in the open transaction (kept over an abort: dead-lettered at once)."""
        self._poison: dict[tuple[str, int, int], BaseException] = {}
        self._strikes: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self._overdue: set[object] = set()
        """Tickets running when their transaction was aborted at the deadline: they end superseded."""
        self.commits = self.aborts = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active: set[object] = set()
        self._lock = asyncio.Lock()
        self._begin_lock = asyncio.Lock()
        self._serial = 0
        self._deadline_at = 0.0
        self._expiries: set[asyncio.Task[None]] = set()
        self._sends: list[asyncio.Future[Any]] = []
        self._after: list[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = []

    def track(self, send: asyncio.Future[Any]) -> None:
        """A send into the open transaction whose acknowledgement nobody awaited: the commit does."""
        send.add_done_callback(_observed)
        self._sends.append(send)

    def after_commit(
        self, committed: Callable[[], Awaitable[None]], aborted: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `committed` once the open transaction commits, `aborted` if it aborts instead (dedup
        writes a done marker only for work whose outputs are committed)."""
        self._after.append((committed, aborted))

    @property
    def producer(self) -> AIOKafkaProducer:
        if self.producer_of is None:
            raise ConfigError("exactly-once: the tier's broker is not attached to its transactions")
        return self.producer_of()

    # --- the barrier (called by the pipeline's tickets) ---

    async def wait_open(self) -> None:
        """Return with the barrier open and a transaction open; the caller registers synchronously."""
        while True:
            if self.fenced:  # left unstarted for the live instance: shutdown does not wait on it
                raise Superseded("the transactional producer is fenced; this instance stops")
            if not self._open.is_set():
                await self._open.wait()
                continue
            producer = self.producer
            if not producer._txn_manager.is_in_transaction():
                async with self._begin_lock:
                    if self._open.is_set() and not producer._txn_manager.is_in_transaction():
                        await producer.begin_transaction()
                        self._arm_deadline(producer)
                continue
            return

    def entered(self, ticket: object) -> None:
        self._active.add(ticket)
        self._idle.clear()

    def left(self, ticket: object) -> None:
        self._active.discard(ticket)
        self._overdue.discard(ticket)
        if not self._active:
            self._idle.set()

    def check(self, ticket: Ticket) -> None:
        """Before each handler attempt: a record of an aborted batch is read again or dead-lettered."""
        if ticket in self._overdue:
            raise Superseded(f"offset {ticket.offset} of {ticket.tp[0]}[{ticket.tp[1]}] is redone")
        error = self._poison.get((ticket.tp[0], ticket.tp[1], ticket.offset))
        if error is not None:
            raise GivenUp(f"dead-lettered after an aborted batch: {type(error).__name__}: {error}") from error

    def failed(self, ticket: Ticket) -> None:
        self.doomed = True

    # --- the commit (the windows' commit hook) ---

    async def commit(self, window: CommitWindow, offsets: dict[TopicPartition, int]) -> None:
        """Commit the open transaction with the offsets of every window (`offsets` are `window`'s,
        which may include partitions it just dropped on revoke)."""
        async with self._lock:
            if self.fenced:
                raise ak.ProducerFenced()
            self._open.clear()
            try:
                if not await self._idle_before_deadline():
                    await self._abort_overdue()
                    raise TransactionAborted("a handler outlived the transaction's deadline")
                await self._commit_all(window, offsets)
            finally:
                if not self.fenced:
                    self._open.set()

    async def _commit_all(self, window: CommitWindow, offsets: dict[TopicPartition, int]) -> None:
        pending: dict[CommitWindow, dict[TopicPartition, int]] = {w: w.pending() for w in self.windows()}
        # `offsets` were read before the barrier closed: the fresh marks win; the passed ones
        # count for partitions the window just dropped (revoke).
        pending[window] = {**offsets, **pending.get(window, {})}
        by_group: dict[str, dict[TopicPartition, int]] = {}
        for w, marks in pending.items():
            if marks:
                by_group.setdefault(w.group_id, {}).update(marks)
        producer = self.producer
        txn = producer._txn_manager
        if txn.is_fatal_error():  # fenced (or another fatal error): this producer is done
            self._fence("the transactional producer failed fatally")
            raise ak.ProducerFenced()
        if not by_group and not txn.is_in_transaction():
            return
        if self.doomed:
            log.warning("exactly-once: a handler failed in this batch; aborting it, the batch is redone")
            await self._abort(pending)
            raise TransactionAborted("a handler attempt failed in the batch")
        sends, self._sends = self._sends, []
        failed = [o for o in await asyncio.gather(*sends, return_exceptions=True) if isinstance(o, Exception)]
        if failed:
            log.warning("exactly-once: %d output(s) unacknowledged (%r); aborting", len(failed), failed[0])
            await self._abort(pending)
            raise TransactionAborted("an output of the batch was not acknowledged")
        try:
            if not txn.is_in_transaction():
                await producer.begin_transaction()
            for group_id, marks in by_group.items():
                await producer.send_offsets_to_transaction(marks, group_id)
            # As late as possible: what is left is the EndTxn round trip (README, "Fencing").
            lost = [w.group_id for w, marks in pending.items() if marks and not await _still_member(w)]
            if lost:
                raise _LostMembership(", ".join(sorted(set(lost))))
            await producer.commit_transaction()
        except _LostMembership as exc:
            log.warning(
                "exactly-once: no longer a member of group(s) %s (the partitions went to another "
                "consumer); aborting the batch instead of committing it",
                exc,
            )
            await self._abort(pending)
            raise TransactionAborted("the consumer lost its group membership") from None
        except Exception as exc:
            if isinstance(exc, ak.ProducerFenced) or txn.is_fatal_error():
                self._fence("producer fenced by a newer instance with the same transactional id")
                raise
            log.warning(
                "exactly-once: commit failed (%s: %s); aborting, the batch is redone", type(exc).__name__, exc
            )
            await self._abort(pending)
            raise
        self.commits += 1
        await self._settle_after(committed=True)
        for key in self.given_up:
            self._poison.pop(key, None)
        self.given_up.clear()
        self._strikes.clear()
        for w, marks in pending.items():
            w.committed_to(marks)

    async def _abort(self, pending: dict[CommitWindow, dict[TopicPartition, int]]) -> None:
        self.aborts += 1
        self._poison.update(self.given_up)
        self.doomed = False
        self.given_up.clear()
        self._sends.clear()
        await self._abort_producer()
        await self._settle_after(committed=False)
        for w in pending:
            for tp, offset in w.rolled_back().items():
                self.supersede((tp.topic, tp.partition), offset - 1)
                try:
                    w.consumer.seek(tp, offset)
                except Exception as exc:  # e.g. the partition was revoked: its new owner reads it
                    log.warning("exactly-once: seek back failed (%s: %s)", type(exc).__name__, exc)

    async def _abort_producer(self) -> None:
        txn = self.producer._txn_manager
        try:
            if txn.is_in_transaction() or txn.state.name == "ABORTABLE_ERROR":
                await self.producer.abort_transaction()
        except ak.ProducerFenced:
            self._fence("producer fenced by a newer instance with the same transactional id")
            raise
        except Exception as exc:  # the broker aborts it at the transaction timeout anyway
            log.warning("exactly-once: abort failed (%s: %s)", type(exc).__name__, exc)

    def _strike(self, key: tuple[str, int, int], error: BaseException) -> None:
        """The record's handler outlived the deadline: the `MAX_STRIKES`-th time it is
        dead-lettered at once on the redo."""
        self._strikes[key] += 1
        if self._strikes[key] >= MAX_STRIKES:
            self._poison[key] = error

    async def _settle_after(self, *, committed: bool) -> None:
        after, self._after = self._after, []
        results = await asyncio.gather(
            *((done if committed else undo)() for done, undo in after), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning(
                    "exactly-once: an after-%s step failed (%s)", "commit" if committed else "abort", result
                )

    def _fence(self, why: str) -> None:
        if not self.fenced:
            self.fenced = True
            log.error("exactly-once: %s; this instance stops (its partitions go to the live one)", why)
            self._open.set()  # wake the records waiting at the barrier: they end unstarted
            self.on_fenced()

    # --- the deadline (a handler slower than the transaction timeout) ---

    def _arm_deadline(self, producer: AIOKafkaProducer) -> None:
        self._serial += 1
        loop = asyncio.get_running_loop()
        limit_s = producer._txn_manager.transaction_timeout_ms / 1000 * DEADLINE_SHARE
        self._deadline_at = loop.time() + limit_s
        loop.call_later(limit_s, self._expire_soon, self._serial)

    def _expire_soon(self, serial: int) -> None:
        if serial == self._serial and self._active:
            task = asyncio.get_running_loop().create_task(self._expire(serial))
            self._expiries.add(task)
            task.add_done_callback(self._expiries.discard)

    async def _expire(self, serial: int) -> None:
        async with self._lock:
            if serial != self._serial or self.fenced or not self._active:
                return  # committed meanwhile, or the handlers ended: the next commit takes it
            self._open.clear()
            try:
                await self._abort_overdue()
            except Exception as exc:
                log.warning("exactly-once: overdue abort failed (%s: %s)", type(exc).__name__, exc)
            finally:
                if not self.fenced:
                    self._open.set()

    async def _idle_before_deadline(self) -> bool:
        """Wait for the started handlers to end; False if the transaction's deadline came first."""
        remaining = self._deadline_at - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(remaining, 0.0))
        except TimeoutError:
            return self._idle.is_set()
        return True

    async def _abort_overdue(self) -> None:
        """Abort the open transaction under running handlers: their later sends fail (no
        transaction), their records end superseded and are read again after the seek back."""
        self._overdue |= self._active
        for ticket in self._active:
            key = (ticket.tp[0], ticket.tp[1], ticket.offset)  # type: ignore[attr-defined]
            self._strike(
                key, DeadlineExceeded(f"the handler outlived {DEADLINE_SHARE:.0%} of the transaction timeout")
            )
        log.warning(
            "exactly-once: %d handler(s) still running at the transaction's deadline (%.0f%% of "
            "transaction_timeout_ms); aborting the batch, it is redone",
            len(self._active),
            DEADLINE_SHARE * 100,
        )
        self._serial += 1
        await self._abort_producer()
        await self._idle.wait()  # the overdue handlers end (superseded at their next attempt)
        await self._abort({w: w.pending() for w in self.windows()})


def _observed(send: asyncio.Future[Any]) -> None:
    """Retrieve a send's outcome (an aborted batch's are never awaited; unretrieved, they log)."""
    if not send.cancelled():
        send.exception()


async def _still_member(window: CommitWindow) -> bool:
    """The window's consumer is still in its group's current generation (a heartbeat says so)."""
    coordinator = getattr(window.consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_do_heartbeat"):
        return True  # not a group consumer (the test broker's): nothing to lose
    if coordinator.generation < 0:
        return False  # kicked out (unknown member, stale generation): aiokafka reset it
    return bool(await coordinator._do_heartbeat())
