"""`processing_guarantee`: the knob, and the wiring of an exactly-once tier.

`exactly_once(routing)` turns error routing's commits into transactional ones (`_transactions`)
and its DLQ writes into sends of the open transaction; `read_committed` makes each subscriber
read only committed data. The transactional id is per instance (`transactional_id`): Kafka bumps
its producer epoch when a restarted instance initialises it, which fences the instance's zombie.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Literal, get_args

from alpha_streaming._broker import raw_producer
from alpha_streaming._errors import ConfigError
from middlewares._dead_letter import DeadLetterWriter
from middlewares._transactions import Transactions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiokafka import ConsumerRecord
    from faststream.kafka import KafkaBroker

    from middlewares._dead_letter import DeadLetterSink
    from middlewares._error_routing import ErrorRoutingMiddleware

__all__ = (
    "GUARANTEES",
    "ProcessingGuarantee",
    "checked_guarantee",
    "exactly_once",
    "read_committed",
    "transactional_id",
)

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
