"""Exactly-once Kafka → Kafka: one Kafka transaction per commit window's batch, not per message.

With `processing_guarantee="exactly_once"` the tier's broker has a transactional producer, so
every handler output and every dead-letter record goes into the transaction that is open while
the handler runs. The commit windows (`_low_water`) decide *when* to commit, as in at-least-once;
this module replaces *how* (`CommitWindow(commit=...)`): at a commit point the `Transactions`
barrier stops new handler starts, waits until every record whose handler started has ended (its
outcome is in its window), then adds the low-water offsets of every window of the broker to the
transaction (`send_offsets_to_transaction`, per consumer group) and commits it. Outputs and
offsets become visible to `read_committed` readers together, or not at all.

A failed commit aborts the transaction: the windows forget what finished since the last
committed offsets, records admitted but not started are superseded, and each consumer seeks back
to its committed offsets, so the batch is processed again into the next transaction. A fenced
producer (`ProducerFenced`: another instance with the same transactional id started) is fatal:
the barrier stays closed and this instance publishes nothing more.

Records must pass the pipeline's gate (single-message subscribers), which is where the barrier
sits; a record never awaits a commit itself in this mode (`Commits(inline=False)`), so the barrier
cannot wait on a record that waits on the commit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, get_args

from aiokafka import errors as ak
from faststream.exceptions import RejectMessage

from alpha_streaming._broker import raw_producer
from alpha_streaming._errors import ConfigError
from middlewares._dead_letter import DeadLetterWriter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
    from faststream.kafka import KafkaBroker

    from middlewares._dead_letter import DeadLetterSink
    from middlewares._error_routing import ErrorRoutingMiddleware
    from middlewares._gate import Ticket
    from middlewares._low_water import CommitWindow

__all__ = (
    "GUARANTEES",
    "ProcessingGuarantee",
    "Transactions",
    "checked_guarantee",
    "exactly_once",
    "read_committed",
    "transactional_id",
)

log = logging.getLogger(__name__)

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
GUARANTEES: tuple[str, ...] = get_args(ProcessingGuarantee)


def checked_guarantee(value: object) -> ProcessingGuarantee:
    if value not in GUARANTEES:
        allowed = ", ".join(repr(g) for g in GUARANTEES)
        raise ConfigError(f"processing_guarantee must be one of {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def transactional_id(service: str, instance_id: str | None) -> str:
    """Stable across restarts of one instance, distinct between instances: a restarted instance
    fences its own zombie (Kafka bumps the producer epoch of the id)."""
    return f"{service}-{instance_id or socket.gethostname()}"


class GivenUp(RejectMessage):
    """Dead-lettered at once: the batch that gave up on this record was aborted and is redone."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def __str__(self) -> str:
        return self.message


def exactly_once(routing: ErrorRoutingMiddleware) -> Transactions:
    """Turn `routing`'s commits into transactional ones, its DLQ writes into transactional sends."""
    transactions = Transactions()
    routing.commits.commit = transactions.commit
    transactions.windows = routing.commits.windows
    routing.dead_letter = _Remembered(
        DeadLetterWriter(service=routing.service, producer=raw_producer), transactions
    )
    return transactions


class _Remembered:
    """The DLQ sink, noting which records were dead-lettered in the open transaction."""

    def __init__(self, sink: DeadLetterSink, transactions: Transactions) -> None:
        self.sink, self.transactions = sink, transactions

    async def write(
        self,
        broker: KafkaBroker,
        records: Sequence[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        attempts: int,
        group_id: str | None,
    ) -> None:
        await self.sink.write(broker, records, error, attempts=attempts, group_id=group_id)
        for record in records:
            self.transactions.given_up[(record.topic, record.partition, record.offset)] = error

    async def close(self) -> None:
        await self.sink.close()


def read_committed(subscriber: Any, *, attached: bool) -> None:
    """An exactly-once tier's subscriber reads only committed data, and must be pipelined (the
    barrier sits in the pipeline's gate)."""
    if not attached:
        raise ConfigError(
            f"processing_guarantee='exactly_once' supports single-message subscribers without "
            f"max_workers; {type(subscriber).__name__} on "
            f"{', '.join(getattr(subscriber, 'topic_names', None) or ())} is not one"
        )
    subscriber._connection_args["isolation_level"] = "read_committed"


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
        self.fenced = False
        self.doomed = False
        """A handler attempt failed: what it published is in the open transaction, so it aborts."""
        self.given_up: dict[tuple[str, int, int], BaseException] = {}
        """Records dead-lettered in the open transaction (kept over an abort: dead-lettered at once)."""
        self._poison: dict[tuple[str, int, int], BaseException] = {}
        self.commits = self.aborts = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active: set[object] = set()
        self._lock = asyncio.Lock()
        self._begin_lock = asyncio.Lock()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self.producer_of is None:
            raise ConfigError("exactly-once: the tier's broker is not attached to its transactions")
        return self.producer_of()

    # --- the barrier (called by the pipeline's tickets) ---

    async def wait_open(self) -> None:
        """Return with the barrier open and a transaction open; the caller registers synchronously."""
        while True:
            if not self._open.is_set():
                await self._open.wait()
                continue
            producer = self.producer
            if not producer._txn_manager.is_in_transaction():
                async with self._begin_lock:
                    if self._open.is_set() and not producer._txn_manager.is_in_transaction():
                        await producer.begin_transaction()
                continue
            return

    def entered(self, ticket: object) -> None:
        self._active.add(ticket)
        self._idle.clear()

    def left(self, ticket: object) -> None:
        self._active.discard(ticket)
        if not self._active:
            self._idle.set()

    def check(self, ticket: Ticket) -> None:
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
                await self._idle.wait()
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
            self.fenced = True
            log.error("exactly-once: the transactional producer failed fatally (fenced?); stopping work")
            raise ak.ProducerFenced()
        if not by_group and not txn.is_in_transaction():
            return
        if self.doomed:
            log.warning("exactly-once: a handler failed in this batch; aborting it, the batch is redone")
            self._poison.update(self.given_up)
            await self._abort(pending)
            raise TransactionAborted("a handler attempt failed in the batch")
        try:
            if not txn.is_in_transaction():
                await producer.begin_transaction()
            for group_id, marks in by_group.items():
                await producer.send_offsets_to_transaction(marks, group_id)
            await producer.commit_transaction()
        except Exception as exc:
            if isinstance(exc, ak.ProducerFenced) or txn.is_fatal_error():
                self.fenced = True
                log.error("exactly-once: producer fenced by a newer instance with the same id; stopping work")
                raise
            log.warning(
                "exactly-once: commit failed (%s: %s); aborting, the batch is redone", type(exc).__name__, exc
            )
            await self._abort(pending)
            raise
        self.commits += 1
        for key in self.given_up:
            self._poison.pop(key, None)
        self.given_up.clear()
        for w, marks in pending.items():
            w.committed_to(marks)

    async def _abort(self, pending: dict[CommitWindow, dict[TopicPartition, int]]) -> None:
        self.aborts += 1
        self.doomed = False
        self.given_up.clear()
        producer = self.producer
        try:
            if (
                producer._txn_manager.is_in_transaction()
                or producer._txn_manager.state.name == "ABORTABLE_ERROR"
            ):
                await producer.abort_transaction()
        except ak.ProducerFenced:
            self.fenced = True
            raise
        except Exception as exc:  # the broker aborts it at the transaction timeout anyway
            log.warning("exactly-once: abort failed (%s: %s)", type(exc).__name__, exc)
        for w in pending:
            for tp, offset in w.rolled_back().items():
                self.supersede((tp.topic, tp.partition), offset - 1)
                try:
                    w.consumer.seek(tp, offset)
                except Exception as exc:  # e.g. the partition was revoked: its new owner reads it
                    log.warning("exactly-once: seek back failed (%s: %s)", type(exc).__name__, exc)
