"""`RedpandaProducer`: idempotent sends through a FastStream `KafkaBroker`'s own aiokafka producer.

The direct tier: no middleware chain, no envelope magic. An `EventEnvelope` is sent exactly as
it was built; in particular one created without `parent=` stays a root event even when it is
sent while a handler is processing another event (`alpha_streaming._lineage.current_event()`).
Use the enhanced tier, or `EventEnvelope.create(..., parent=...)`, for automatic lineage.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from pydantic import BaseModel

from alpha_streaming import _serialization as serialization
from alpha_streaming._broker import make_broker, raw_producer
from alpha_streaming._clients._errors import kafka_errors
from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import ClientStateError, ConfigError
from alpha_streaming._settings import RedpandaSettings

if TYPE_CHECKING:
    from types import TracebackType

    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import RecordMetadata
    from faststream.kafka import KafkaBroker

__all__ = ("JSON_CONTENT_TYPE", "OutgoingRecord", "RedpandaProducer", "encode_key", "encode_record")

JSON_CONTENT_TYPE = b"application/json"
CONTENT_TYPE_HEADER = "content-type"

Key: TypeAlias = str | bytes | None
Value: TypeAlias = EventEnvelope | BaseModel | Mapping[str, Any] | bytes | None
Headers: TypeAlias = Mapping[str, str | bytes] | None
WireHeaders: TypeAlias = list[tuple[str, bytes]]


class OutgoingRecord(NamedTuple):
    """One record for `RedpandaProducer.send_many`; a plain `(key, value)` tuple works too."""

    key: Key
    value: Value
    headers: Headers = None
    partition: int | None = None
    timestamp_ms: int | None = None


def encode_key(key: Key) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"key must be str, bytes or None, got {type(key).__name__}")


def _header_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def encode_record(value: Value, headers: Headers = None) -> tuple[bytes | None, WireHeaders]:
    """Value bytes and wire headers for `value`, serialised exactly as the enhanced tier does.

    bytes: sent untouched. `EventEnvelope`: its JSON plus its identity headers (those win over
    same-named caller headers, so the headers always mirror the body). Mapping or pydantic model:
    JSON through `alpha_streaming._serialization`. JSON values carry `content-type: application/json`.
    None: a tombstone (needs a key).
    """
    if isinstance(value, bytes) or value is None:
        # The hot path: untouched bytes, caller headers only.
        if not headers:
            return value, []
        return value, [(name, _header_bytes(v)) for name, v in headers.items()]
    merged: dict[str, bytes] = {CONTENT_TYPE_HEADER: JSON_CONTENT_TYPE}
    if headers:
        merged.update((name, _header_bytes(v)) for name, v in headers.items())
    if isinstance(value, EventEnvelope):
        body = value.to_bytes()
        merged.update((name, v.encode()) for name, v in value.headers().items())
    elif isinstance(value, BaseModel | Mapping):
        body = serialization.dumps(value)
    else:
        raise TypeError(
            f"value must be an EventEnvelope, a mapping, a pydantic model, bytes or None; "
            f"got {type(value).__name__} (encode it to bytes yourself to send it untouched)"
        )
    return body, list(merged.items())


class RedpandaProducer:
    """Idempotent (`acks="all"`) producer that sends through a FastStream `KafkaBroker`.

    Built from `RedpandaSettings` it owns its broker and stops it on `stop()`; built from an
    existing broker (`broker=`) it shares that broker's connection and leaves its lifecycle alone.
    """

    def __init__(
        self,
        config: RedpandaSettings | None = None,
        *,
        broker: KafkaBroker | None = None,
    ) -> None:
        if config is not None and broker is not None:
            raise ConfigError(
                "pass either config= (the producer builds and owns its broker) or broker= "
                "(it shares yours), not both: the broker already carries its connection settings"
            )
        self._owns_broker = broker is None
        self._broker = broker if broker is not None else make_broker(config or RedpandaSettings())
        self._producer: AIOKafkaProducer | None = None
        self._stopped = False

    @classmethod
    def from_broker(cls, broker: KafkaBroker) -> RedpandaProducer:
        """A producer sharing `broker`'s connection; the broker's owner starts and stops it."""
        return cls(broker=broker)

    @property
    def broker(self) -> KafkaBroker:
        """The FastStream broker this producer sends through."""
        return self._broker

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def producer_id(self) -> int | None:
        """The idempotent session's producer id once the broker has assigned one, else None."""
        txn = None if self._producer is None else self._producer._txn_manager
        if txn is None or txn.producer_id < 0:
            return None
        return int(txn.producer_id)

    async def start(self) -> None:
        """Connect (an owned broker) or attach to the shared broker's producer."""
        if self._stopped:
            raise ClientStateError("this RedpandaProducer was stopped; create a new one")
        if self._producer is not None:
            return
        with kafka_errors("start producer"):
            await self._broker.connect()
        producer = raw_producer(self._broker)
        if producer._txn_manager is None:
            raise ConfigError(
                "the KafkaBroker's producer is not idempotent; build it with "
                "alpha_streaming._broker.make_broker(...) or KafkaBroker(..., enable_idempotence=True)"
            )
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is pending; stop the broker too when this producer owns it."""
        producer, self._producer = self._producer, None
        self._stopped = True
        if producer is None:
            return
        try:
            with kafka_errors("flush on stop"):
                await producer.flush()
        finally:
            if self._owns_broker:
                with kafka_errors("stop producer"):
                    await self._broker.stop()

    async def __aenter__(self) -> RedpandaProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _ready(self) -> AIOKafkaProducer:
        if self._producer is None:
            state = "was stopped" if self._stopped else "is not started; call `await producer.start()`"
            raise ClientStateError(f"RedpandaProducer {state} (or use `async with RedpandaProducer(...)`)")
        return self._producer

    async def send(
        self,
        *,
        topic: str,
        value: Value,
        key: Key = None,
        headers: Headers = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """Send one record and wait for the broker's acknowledgement (all in-sync replicas).

        Returns:
            The record's `RecordMetadata` (topic, partition, offset, timestamp).
        Raises:
            UnknownTopicError: the topic does not exist (after `request_timeout_ms`).
            KafkaClientError: the broker refused the record or could not be reached.
            ClientStateError: the producer is not started or was stopped.
            TypeError: `value` or `key` has a type that cannot be sent.
        """
        producer = self._ready()
        body, wire_headers = encode_record(value, headers)
        with kafka_errors("send", topic):
            future = await producer.send(topic, body, encode_key(key), partition, timestamp_ms, wire_headers)
            return await future

    async def send_many(
        self,
        topic: str,
        records: Iterable[OutgoingRecord | tuple[Key, Value]],
    ) -> list[RecordMetadata]:
        """Send many records pipelined, then wait once for all acknowledgements.

        Records are queued in order (per-partition order is kept) and batched by aiokafka.
        Returns the metadata in input order. If any record fails, the others still complete and
        the first failure is raised; the records that were acknowledged stay written.
        """
        producer = self._ready()
        futures: list[asyncio.Future[RecordMetadata]] = []
        append = futures.append
        send = producer.send
        with kafka_errors("send_many", topic):
            for record in records:
                if len(record) == 2:
                    key, value = record
                    # Fast path for the common throughput case: bytes in, nothing to encode.
                    if type(value) is bytes and (key is None or type(key) is bytes):
                        append(await send(topic, value, key))
                        continue
                    headers, partition, timestamp_ms = None, None, None
                else:
                    key, value, headers, partition, timestamp_ms = record
                body, wire_headers = encode_record(value, headers)
                append(await send(topic, body, encode_key(key), partition, timestamp_ms, wire_headers))
            results = await asyncio.gather(*futures, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged or failed."""
        with kafka_errors("flush"):
            await self._ready().flush()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_producer", None) is not None and self._owns_broker:
            _warn(f"unclosed {self!r}: call `await producer.stop()`", ResourceWarning, stacklevel=1)
