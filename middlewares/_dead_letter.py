"""Writing failed records to `<topic>.dlq`: the original bytes untouched, plus error headers.

Why a producer of its own instead of the broker's: the broker's producer is idempotent, and
aiokafka numbers each partition's batches in sequence when it sends them. A batch the broker
refuses for good (e.g. `MessageSizeTooLarge`) leaves a gap in that numbering, after which every
later send to that partition fails with `OutOfOrderSequenceNumber` (checked against Kafka 4.1).
A refused DLQ write must not wedge the application's producer, and the DLQ producer itself is
replaced after any failed write, so the next attempt starts with a clean sequence.

DLQ topics are created when missing (broker auto-creation is off) with the source topic's
partition count, and with a `max.message.bytes` `HEADROOM_BYTES` above the source topic's, so a
record that was just under the source's limit still fits with its error headers. Should a DLQ
topic that already exists be tighter, the stack trace and then the error message are clipped;
the original key, value and headers are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from traceback import format_exception
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka import errors as ak
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from alpha_streaming._dlq import DeadLetter, DlqHeaders, KafkaHeaderList
from alpha_streaming._errors import KafkaClientError
from alpha_streaming._topics import dlq_topic
from middlewares._dlq_topics import DEFAULT_MAX_MESSAGE_BYTES, UNKNOWN_LAYOUT, DlqTopic, describe_or_create

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from aiokafka.admin import AIOKafkaAdminClient
    from faststream.kafka import KafkaBroker

__all__ = ("DeadLetterSink", "DeadLetterWriter", "DlqWriteError", "Failure", "dead_letter_headers")

log = logging.getLogger(__name__)


class DlqWriteError(KafkaClientError):
    """A dead-letter record was not acknowledged by the broker."""


class DeadLetterSink(Protocol):
    """Where error routing puts records it gives up on (a fake in unit tests)."""

    async def write(
        self,
        broker: KafkaBroker,
        records: Sequence[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        attempts: int,
        group_id: str | None,
    ) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a write dead-letters its records: worked out once, shared by every record of it."""

    error: BaseException
    attempts: int
    group_id: str | None
    service: str
    stacktrace: str
    failed_at: datetime

    @classmethod
    def of(cls, error: BaseException, *, attempts: int, group_id: str | None, service: str) -> Failure:
        return cls(error, attempts, group_id, service, "".join(format_exception(error)), datetime.now(UTC))


def dead_letter_headers(
    record: ConsumerRecord[Any, Any], failure: Failure, topic: DlqTopic = UNKNOWN_LAYOUT
) -> tuple[int | None, KafkaHeaderList]:
    """The partition (None: by key) and headers of `record`'s DLQ copy (key and value are its own);
    `topic` defaults to a DLQ topic as the writer creates it. Shared with the test kit."""
    letter = DeadLetter(
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
        original_timestamp_ms=record.timestamp,
        consumer_group=failure.group_id,
        exception_fqcn=f"{type(failure.error).__module__}.{type(failure.error).__qualname__}",
        exception_message=str(failure.error),
        stacktrace=failure.stacktrace,
        attempts=failure.attempts,
        service=failure.service,
        failed_at=failure.failed_at,
    )
    headers = _fit(record, [*_original_headers(record), *letter.headers()], topic)
    # Same partition number as the source when the DLQ has it, so a redrive keeps per-key order.
    return (record.partition if record.partition < topic.partitions else None), headers


class DeadLetterWriter:
    """Writes DLQ records and waits for the broker's acknowledgement of every one of them."""

    def __init__(
        self,
        *,
        service: str,
        send_timeout_s: float = 15.0,
        max_wait_s: float = 120.0,
        producer: Callable[[KafkaBroker], AIOKafkaProducer] | None = None,
    ) -> None:
        """`producer` replaces the writer's own: exactly-once writes into the broker's open
        transaction, so a DLQ record and its offset commit together (`_transactions`)."""
        self.service = service
        self._given = producer
        self.send_timeout_s = send_timeout_s
        self.max_wait_s = max_wait_s
        self._topics: dict[str, DlqTopic] = {}
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._lock = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()

    async def write(
        self,
        broker: KafkaBroker,
        records: Sequence[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        attempts: int,
        group_id: str | None,
    ) -> None:
        """Dead-letter every record; returns only once the broker acknowledged all of them."""
        failure = Failure.of(error, attempts=attempts, group_id=group_id, service=self.service)
        try:
            producer = self._given(broker) if self._given is not None else await self._producer(broker)
            pending = []
            for record in records:
                target = dlq_topic(record.topic)
                topic = await self._ensure_topic(broker, record.topic, target)
                partition, headers = dead_letter_headers(record, failure, topic)
                pending.append(
                    await producer.send(
                        target, value=record.value, key=record.key, partition=partition, headers=headers
                    )
                )
            await self._acknowledged(asyncio.gather(*pending), records)
        except (ak.KafkaError, OSError, TimeoutError, KafkaClientError) as exc:
            await self._discard(broker)
            for record in records:
                self._topics.pop(dlq_topic(record.topic), None)  # re-read its config next time
            raise DlqWriteError(f"dead-letter write failed: {type(exc).__name__}: {exc}") from exc

    async def _acknowledged(self, sent: asyncio.Future[Any], records: Sequence[Any]) -> None:
        """Wait for the outcome of writes already handed to the producer, up to `max_wait_s`.

        Giving up early would be ambiguous: the producer keeps retrying a write the broker could
        not take yet (e.g. too few in-sync replicas), stores it once the brokers are back, and the
        redelivered message would be dead-lettered a second time.
        """
        waited = 0.0
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(sent), self.send_timeout_s)
                return
            except TimeoutError:
                waited += self.send_timeout_s
                if waited >= self.max_wait_s:
                    sent.cancel()
                    raise
                log.warning(
                    "dead-letter write of %d record(s) not acknowledged after %.0f s; still waiting",
                    len(records),
                    waited,
                )

    async def close(self) -> None:
        """Stop the DLQ producers (every write was already acknowledged, so nothing is pending)."""
        producers = list(self._producers.values())
        self._producers.clear()
        for producer in producers:
            await producer.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _producer(self, broker: KafkaBroker) -> AIOKafkaProducer:
        producer = self._producers.get(id(broker))
        if producer is not None:
            return producer
        async with self._lock:
            producer = self._producers.get(id(broker))
            if producer is None:
                # The broker's own connection settings (servers, client id, security), so the
                # DLQ producer reaches the same cluster the same way; idempotent, acks=all, and
                # allowed requests as large as any DLQ record the broker could accept.
                options = dict(broker._connection_kwargs)  # no public accessor in FastStream 0.7
                options.update(
                    enable_idempotence=True,
                    acks="all",
                    max_request_size=max(
                        int(options.get("max_request_size") or 0),
                        16 * DEFAULT_MAX_MESSAGE_BYTES,
                    ),
                )
                producer = AIOKafkaProducer(**options)
                await producer.start()
                self._producers[id(broker)] = producer
            return producer

    async def _discard(self, broker: KafkaBroker) -> None:
        producer = self._producers.pop(id(broker), None)
        if producer is None:
            return
        # Stopping flushes; a batch the broker keeps refusing could hold that for long, so it
        # runs aside and the next write gets a fresh producer (new id, clean sequence numbers).
        task = asyncio.create_task(_stop_quietly(producer))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _ensure_topic(self, broker: KafkaBroker, source: str, target: str) -> DlqTopic:
        known = self._topics.get(target)
        if known is not None:
            return known
        admin: AIOKafkaAdminClient = broker.config.admin_client
        async with self._lock:
            known = self._topics.get(target)
            if known is None:
                known = self._topics[target] = await describe_or_create(admin, source, target)
        return known


def _original_headers(record: ConsumerRecord[Any, Any]) -> KafkaHeaderList:
    return [(key, bytes(value) if value is not None else b"") for key, value in record.headers or ()]


def _fit(record: ConsumerRecord[Any, Any], headers: KafkaHeaderList, topic: DlqTopic) -> KafkaHeaderList:
    """Clip the stack trace, then the error message, until the record fits the DLQ topic."""
    # Batch header and framing come on top of the record itself.
    budget = topic.max_message_bytes - 128
    for name in (DlqHeaders.EXCEPTION_STACKTRACE, DlqHeaders.EXCEPTION_MESSAGE):
        excess = DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, record.value, headers) - budget
        if excess <= 0:
            break
        headers = [
            (key, value[: max(0, len(value) - excess)] if key == name else value) for key, value in headers
        ]
    return headers


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10.0)
    except Exception as exc:  # the producer is being thrown away; nothing depends on it
        log.debug("discarded DLQ producer did not stop cleanly: %r", exc)
