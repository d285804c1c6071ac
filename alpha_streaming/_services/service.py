"""The object `StreamServiceBuilder.build()` returns: a FastStream app plus legacy start/stop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from faststream import FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming._envelope import EnvelopeHeaders
from alpha_streaming._errors import ConfigError
from alpha_streaming._services.activity import ActivityProbe
from alpha_streaming._services.health import ServiceHealth, probe_broker
from middlewares._loop_context import LoopContext

if TYPE_CHECKING:
    from aiokafka.structs import RecordMetadata

    from middlewares._lease_scripts import RedisClient

__all__ = ("PRODUCER_CONTEXT_KEY", "CurrentProducer", "ServiceProducer", "StreamService")

PRODUCER_CONTEXT_KEY = "alpha_service_producer"


class ServiceProducer:
    """Publishes events through the service's broker, so the enhanced stack wraps them.

    Inside a handler the event being processed becomes the parent: the published envelope
    inherits its `correlation_id` and gets `causation_id` = its id.
    """

    __slots__ = ("_broker", "_source")

    def __init__(self, broker: KafkaBroker, *, source: str) -> None:
        self._broker = broker
        self._source = source

    async def send(
        self,
        *,
        topic: str,
        value: BaseModel | Mapping[str, Any],
        key: str | None = None,
        event_type: str | None = None,
        event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RecordMetadata | None:
        """Publish `value` as the `data` of a new envelope and wait for the broker's ack.

        `event_type` defaults to the model's class name (the topic for a mapping). `event_id`
        defaults to the deterministic child id inside a handler (a re-run sends the same id) and
        to a new UUIDv7 elsewhere. Returns the record metadata (None under FastStream's
        in-memory test broker).
        """
        if not topic:
            raise ConfigError("send() needs a topic, e.g. topic='paper.signals.validated'")
        merged = dict(headers or {})
        if event_type is not None:
            merged[EnvelopeHeaders.TYPE] = event_type
        if event_id is not None:
            merged[EnvelopeHeaders.ID] = event_id
        body = value if isinstance(value, BaseModel) else dict(value)
        result: RecordMetadata | None = await self._broker.publish(
            body, topic=topic, key=key.encode() if key is not None else None, headers=merged
        )
        return result


# Inject the service producer into a typed handler: `async def h(order: Order, out: CurrentProducer)`.
CurrentProducer = Annotated[ServiceProducer, LoopContext(PRODUCER_CONTEXT_KEY)]


class StreamService:
    """A built service: `.app` for `faststream run`, or `await start()`/`await stop()` by hand."""

    def __init__(
        self,
        *,
        name: str,
        app: FastStream,
        broker: KafkaBroker,
        consumed: tuple[str, ...],
        produced: tuple[str, ...],
        producer: ServiceProducer | None,
        redis: RedisClient | None,
        activity: ActivityProbe,
    ) -> None:
        self.name = name
        self.app = app
        self.broker = broker
        self.consumed_topics = consumed
        self.produced_topics = produced
        """The topics `add_producer(topics=...)` declared (it may publish to others too)."""
        self.topics = tuple(dict.fromkeys([*consumed, *produced]))
        """Every topic the service consumes or declared it produces (DLQ twins not included)."""
        self.redis = redis
        self.activity = activity
        self._producer = producer

    @property
    def producer(self) -> ServiceProducer:
        if self._producer is None:
            raise ConfigError(f"service {self.name!r} has no producer; call .add_producer() on the builder")
        return self._producer

    @property
    def started(self) -> bool:
        """True while the broker runs, however it was started (`start()` or `faststream run`)."""
        return bool(self.broker.running)

    async def start(self) -> None:
        """Run the app's startup hooks and start the broker (connect, subscribe, consume)."""
        await self.app.start()

    async def stop(self) -> None:
        """Stop fetching, let in-flight messages finish (and commit), flush and close the producer."""
        await self.app.stop()

    async def health(self) -> ServiceHealth:
        """A readiness snapshot: broker, Redis, partitions and poll freshness."""
        return await probe_broker(
            self.name, self.broker, started=self.started, redis=self.redis, activity=self.activity
        )

    def __repr__(self) -> str:
        return f"StreamService(name={self.name!r}, topics={list(self.topics)!r})"
