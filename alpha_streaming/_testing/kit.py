"""`TestStreamService`: a service on the enhanced tier, run in memory, faithfully, in milliseconds.

Real: FastStream's in-memory broker runs the handlers and every middleware of the tier (metrics,
error routing, envelope, dedup, outputs) as they are; dedup runs its own Lua scripts on fakeredis;
dead letters come from the production DLQ record builder; outputs are encoded as FastStream's
producer encodes them. Simulated: Kafka (a record is handed to one subscriber per consumer group;
offsets count from 0 per partition, as on a fresh topic; no commit is made) and time (a retry's
backoff is recorded, not waited). The app's own startup and shutdown hooks do not run: they
usually reach a real Kafka (topic checks); the tier's startup check (ack policies) does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Self, cast

from aiokafka import ConsumerRecord
from faststream import FastStream
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.kafka.testing import _find_handler

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import ConfigError
from alpha_streaming._services.service import StreamService
from alpha_streaming._testing.inbound import Inbound, encode
from alpha_streaming._testing.memory_redis import MemoryRedis
from alpha_streaming._testing.probe import Delivery, Probe, Sleeps
from alpha_streaming._testing.wire import MemoryDeadLetters, Record, RecordingProducer, Wire
from alpha_streaming._topics import dlq_topic, is_dlq_topic
from middlewares._dedup import DeduplicationMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._tier import wrong_ack_policy

if TYPE_CHECKING:
    from types import TracebackType

    from fakeredis import FakeAsyncRedis
    from faststream.kafka.subscriber.usecase import LogicSubscriber
    from redis.asyncio import Redis

__all__ = ("TestStreamService",)


class TestStreamService:
    """Run a built service, a FastStream app or a broker carrying an `EnhancedTier`, in memory.

    ```python
    async with TestStreamService(service) as t:
        delivery = await t.publish("paper.signals.raw", Signal(...), key="s:INFY")
        assert delivery.status == "processed"
        [child] = t.published("paper.signals.validated")
    ```
    Several targets may run together: what one publishes reaches the others' subscribers.
    Every Redis client of the targets (the tier's, the service's) talks to one in-memory server
    (`t.redis`) for the duration; retry policies record their backoffs instead of waiting; the
    DLQ is in memory (`t.dead_letters`). All of it is put back on exit.
    """

    __test__ = False  # a library class, not a pytest test class

    def __init__(self, *targets: StreamService | FastStream | KafkaBroker) -> None:
        if not targets:
            raise ConfigError("TestStreamService needs a service, an app or a broker to run")
        self._brokers, self._clients = _brokers_and_clients(targets)
        self._wire = Wire()
        self._probe = Probe()
        self._sleeps = Sleeps()
        self._redis = MemoryRedis()
        self._inbound = Inbound()
        self._subscribers: list[LogicSubscriber[Any]] = []
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc_val, exc_tb)

    @property
    def redis(self) -> FakeAsyncRedis:
        """A client of the in-memory Redis the service uses: seed data, read dedup keys."""
        return self._redis.client

    @property
    def retry_delays(self) -> tuple[float, ...]:
        """Every backoff the retry policies asked for so far, in order (none was waited)."""
        return tuple(self._sleeps.delays)

    async def publish(
        self,
        topic: str,
        data: Any,
        *,
        key: str | bytes | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int = 0,
        group: str | None = None,
    ) -> Delivery:
        """Deliver one record to every consumer group of `topic`; return how its processing ended.

        `data`: bytes go as they are (poison); an `EventEnvelope` as it is; a mapping or a pydantic
        model becomes the `data` of a new envelope (`event_id`, `event_type` and `key` if given).
        The record carries what the project's producer writes for it, plus `headers`; its key is
        `key`, else the envelope's. `group` picks the delivery to return when several consumer
        groups read `topic`.
        """
        if self._stack is None:
            raise RuntimeError("publish inside `async with TestStreamService(...)`")
        subscribers = self._subscribers_of(topic, partition, group)
        value, wire_headers, record_key = encode(
            topic, data, key=key, event_id=event_id, event_type=event_type, headers=headers
        )
        fields = self._inbound.fields(topic, partition, record_key, value)
        deliveries = []
        for subscriber in subscribers:
            # Each consumer group reads its own copy of the record.
            record: ConsumerRecord[Any, Any] = ConsumerRecord(**fields, headers=list(wire_headers))
            deliveries.append(await self._deliver(subscriber, record))
        return next((d for d in deliveries if group is None or d.group_id == group), deliveries[0])

    def published(self, topic: str) -> list[EventEnvelope]:
        """The envelopes the service published to `topic`, in order."""
        return [record.envelope for record in self._wire.on(topic)]

    def records(self, topic: str) -> list[Record]:
        """Every record written to `topic` (outputs or dead letters), as it would be on the wire."""
        return self._wire.on(topic)

    def dead_letters(self, topic: str) -> list[Record]:
        """The DLQ records of `topic` (or of the `.dlq` topic named): original key, bytes, error headers."""
        return self._wire.on(topic if is_dlq_topic(topic) else dlq_topic(topic))

    def refuse(self, topic: str, *, times: int = 1) -> None:
        """Make the next `times` writes to `topic` fail, as a broker that does not acknowledge them."""
        self._wire.refuse(topic, times)

    async def _start(self, stack: AsyncExitStack) -> None:
        routings: list[ErrorRoutingMiddleware] = []
        dedups: list[DeduplicationMiddleware] = []
        for broker in self._brokers:
            found = [m for m in broker.middlewares if isinstance(m, ErrorRoutingMiddleware)]
            if not found:
                raise ConfigError(
                    f"{broker!r} carries no EnhancedTier (no ErrorRoutingMiddleware among its middlewares); "
                    "build it with `tier.broker(...)` or StreamServiceBuilder"
                )
            # The tier's own startup check, as `EnhancedTier.install` runs it.
            problems = [p for sub in broker.subscribers if (p := wrong_ack_policy(sub)) is not None]
            if problems:
                raise ConfigError("; ".join(problems))
            routings.extend(found)
            dedups.extend(m for m in broker.middlewares if isinstance(m, DeduplicationMiddleware))
        self._redis.adopt([_plain(client) for client in (*self._clients, *(dedup.redis for dedup in dedups))])
        stack.push_async_callback(self._redis.restore)
        for dedup in dedups:
            dedup.cache.clear()  # a fresh service remembers no event
            stack.push_async_callback(dedup.close)  # its lease-renewal timer, as `tier.close()` does
        for routing in routings:
            stack.callback(_put_back, routing, routing.policy, routing.dead_letter)
            routing.policy = replace(routing.policy, sleep=self._sleeps)
            routing.dead_letter = MemoryDeadLetters(self._wire, service=routing.service)
        for broker in self._brokers:
            broker.insert_middleware(self._probe)
            stack.callback(self._remove_probe, broker)
        self._subscribers = [cast("LogicSubscriber[Any]", s) for b in self._brokers for s in b.subscribers]
        await stack.enter_async_context(TestKafkaBroker(*self._brokers, connect_only=False))
        for broker in self._brokers:
            # TestKafkaBroker puts the real producer back when it exits.
            broker.config.broker_config.producer = RecordingProducer(
                broker, self._brokers, self._wire, self._pass_on, self._subscribers
            )

    async def _pass_on(self, record: Record) -> None:
        """Hand a record the targets wrote to their own subscribers of its topic, as Kafka would."""
        partition = record.partition or 0
        handlers = list(_find_handler(self._subscribers, record.topic, partition))
        if handlers:
            fields = self._inbound.fields(record.topic, partition, record.key, record.value)
            for handler in handlers:
                consumed = ConsumerRecord(**fields, headers=list(record.headers))
                await handler.process_message(
                    [consumed] if isinstance(handler, BatchSubscriber) else consumed
                )

    def _remove_probe(self, broker: KafkaBroker) -> None:
        config = broker.config.broker_config
        config.broker_middlewares = tuple(m for m in config.broker_middlewares if m is not self._probe)

    def _subscribers_of(self, topic: str, partition: int, group: str | None) -> list[LogicSubscriber[Any]]:
        found = list(_find_handler(self._subscribers, topic, partition))
        if not found:
            consumed = sorted({t for sub in self._subscribers for t in sub.topic_names})
            raise ConfigError(f"no subscriber consumes {topic!r}; the service consumes {consumed}")
        groups = [sub.group_id for sub in found]
        if group is not None and group not in groups:
            raise ConfigError(f"no consumer group {group!r} reads {topic!r}; these do: {groups}")
        if group is None and len(found) > 1:
            raise ConfigError(f"several consumer groups read {topic!r} ({groups}); say which with group=...")
        return found

    async def _deliver(
        self, subscriber: LogicSubscriber[Any], record: ConsumerRecord[bytes, bytes]
    ) -> Delivery:
        self._probe.watch(record)
        try:
            await subscriber.process_message([record] if isinstance(subscriber, BatchSubscriber) else record)
        finally:
            ended = self._probe.take(record)
        state, delays = ended if ended is not None else (None, ())
        outcome = state.outcome if state is not None else None
        if state is None or outcome is None:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            raise RuntimeError(f"{where} ended without an outcome of the enhanced tier")
        return Delivery(
            status=outcome,
            attempts=state.attempts,
            retries=state.retries,
            retry_delays=delays,
            error=state.error,
            envelope=state.envelope,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group_id=subscriber.group_id,
        )


def _plain(client: Any) -> Redis:
    """The kit points plain clients at its in-memory server; a cluster client has no such seam."""
    from redis.asyncio import Redis

    if not isinstance(client, Redis):
        raise ConfigError(
            f"TestStreamService needs services built with a redis.asyncio.Redis client, got "
            f"{type(client).__name__}; a Redis Cluster client is for production (settings.redis_cluster)"
        )
    return client


def _brokers_and_clients(
    targets: Iterable[StreamService | FastStream | KafkaBroker],
) -> tuple[list[KafkaBroker], list[Redis]]:
    brokers: list[Any] = []
    clients: list[Redis] = []
    for target in targets:
        if isinstance(target, StreamService):
            brokers.append(target.broker)
            if target.redis is not None:
                clients.append(_plain(target.redis))
        elif isinstance(target, FastStream):
            brokers.extend(target.brokers)
        else:
            brokers.append(target)
    for broker in brokers:
        if not isinstance(broker, KafkaBroker):
            raise ConfigError(f"TestStreamService runs Kafka brokers; got {broker!r}")
    # A service given together with its own app is one broker.
    return list({id(broker): broker for broker in brokers}.values()), clients


def _put_back(routing: ErrorRoutingMiddleware, policy: Any, dead_letter: Any) -> None:
    routing.policy, routing.dead_letter = policy, dead_letter
