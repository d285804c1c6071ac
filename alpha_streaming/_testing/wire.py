"""What a service under test writes, recorded as the bytes production would send.

Outputs: FastStream's in-memory producer is extended to log each record the way FastStream's
real producer encodes it (codec, `content-type` header, key) before delivering it in memory.
Dead letters: the production record builder (`middlewares._dead_letter.dead_letter_headers`)
makes each DLQ record, so key, value and headers are those error routing writes to Kafka.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaTimeoutError
from faststream.kafka.testing import FakeProducer

from alpha_streaming._dlq import DeadLetter
from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._topics import dlq_topic
from middlewares._dead_letter import DlqWriteError, Failure, dead_letter_headers

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from faststream.kafka import KafkaBroker
    from faststream.kafka.response import KafkaPublishCommand
    from faststream.kafka.subscriber.usecase import LogicSubscriber

__all__ = ("MemoryDeadLetters", "Record", "RecordingProducer", "Wire")

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """A record the service wrote: topic, partition (None: the key decides), key, value, headers."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> bytes | None:
        """The value of header `name` (the last one, as Kafka clients read it), or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1] if found else None

    @property
    def envelope(self) -> EventEnvelope:
        """The value as an `EventEnvelope` (raises `EnvelopeError` if it is none)."""
        return EventEnvelope.from_bytes(self.value or b"")

    @property
    def dead_letter(self) -> DeadLetter:
        """The error headers of a DLQ record (raises `ValueError` if it is none)."""
        return DeadLetter.from_headers(self.headers)


class Wire:
    """Every record written, in order; and the topics that refuse the next writes."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._refusals: dict[str, int] = {}

    def on(self, topic: str) -> list[Record]:
        return [record for record in self.records if record.topic == topic]

    def refuse(self, topic: str, times: int) -> None:
        self._refusals[topic] = self._refusals.get(topic, 0) + times

    def write(self, record: Record) -> None:
        """Append `record`, or fail as a broker that does not acknowledge it."""
        left = self._refusals.get(record.topic, 0)
        if left:
            self._refusals[record.topic] = left - 1
            raise KafkaTimeoutError(f"the test refused this write to {record.topic}")
        self.records.append(record)


class RecordingProducer(FakeProducer):
    """FastStream's in-memory producer, logging each record to the `Wire` before handing it on.

    A single record is handed on as logged (`pass_on`: key None stays None, offsets count on);
    a batch goes FastStream's in-memory way. Only the targets' own subscribers receive either:
    not the stand-ins `TestKafkaBroker` adds for publishers, which would consume the outputs
    through the tier (dedup keys, metrics) as no consumer of the service does in production.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        brokers: Sequence[KafkaBroker],
        wire: Wire,
        pass_on: Callable[[Record], Awaitable[None]],
        subscribers: Sequence[LogicSubscriber[Any]],
    ) -> None:
        super().__init__(broker, brokers)
        self._wire = wire
        self._pass_on = pass_on
        self._own = subscribers

    @property
    def subscribers(self) -> Iterable[LogicSubscriber[Any]]:
        return self._own

    async def publish(self, cmd: KafkaPublishCommand) -> None:
        # As FastStream's producer encodes it: a keyed None is a tombstone.
        if cmd.body is None and cmd.key is not None:
            value, content_type = None, None
        else:
            value, content_type = await self.codec.encode(cmd.body, self._serializer)
        headers = {"content-type": content_type or "", **cmd.headers_to_publish()}
        record = Record(cmd.destination, cmd.partition, cmd.key, value, _encoded(headers))
        self._wire.write(record)
        await self._pass_on(record)

    async def publish_batch(self, cmd: KafkaPublishCommand) -> None:
        headers = cmd.headers_to_publish()
        for position, body in enumerate(cmd.batch_bodies):
            value, content_type = await self.codec.encode(body, self._serializer)
            own = {"content-type": content_type, **headers} if content_type else headers
            record = Record(cmd.destination, cmd.partition, cmd.key_for(position), value, _encoded(own))
            self._wire.write(record)
        await super().publish_batch(cmd)

    @property
    def _serializer(self) -> Any:
        return self.broker.config.fd_config._serializer


def _encoded(headers: dict[str, str]) -> Headers:
    return tuple((name, (value or "").encode()) for name, value in headers.items())


class MemoryDeadLetters:
    """A `DeadLetterSink` writing to the `Wire` the records `DeadLetterWriter` writes to Kafka."""

    def __init__(self, wire: Wire, *, service: str) -> None:
        self._wire = wire
        self._service = service

    async def write(
        self,
        broker: KafkaBroker,
        records: Sequence[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        attempts: int,
        group_id: str | None,
    ) -> None:
        failure = Failure.of(error, attempts=attempts, group_id=group_id, service=self._service)
        letters = []
        for record in records:
            partition, headers = dead_letter_headers(record, failure)
            letters.append(
                Record(dlq_topic(record.topic), partition, record.key, record.value, tuple(headers))
            )
        try:
            for letter in letters:
                self._wire.write(letter)
        except KafkaTimeoutError as exc:
            raise DlqWriteError(f"dead-letter write failed: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        return None
