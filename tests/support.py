"""Helpers shared by the unit and integration tests; one copy of each.

- `eventually`: poll a condition (plain or async) under a deadline; never a fixed sleep.
- `Spy`: a middleware factory that records every delivery, its final `MessageState` and its end.
- `RecordingSink`: stands in for the DLQ writer (TestKafkaBroker has no producer to write with).
- `Sleeps`: a `RetryPolicy(sleep=...)` that records the backoffs instead of waiting them.
- `mock_consumer`: a consumer whose commits and seeks can be asserted, for TestKafkaBroker.
- `dead_redis`: a Redis client for a port nobody listens on (an outage, without any server).
- `shut_down`: stop a broker with its `EnhancedTier` in the documented order.
- Kafka reads and writes with plain aiokafka clients: `send`, `read_topic`, `end_offset`,
  `group_lag`, `lag_drains`, `committed_offsets`.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from unittest.mock import AsyncMock, MagicMock

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream import BaseMiddleware
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from alpha_streaming._envelope import EventEnvelope
from middlewares._state import MessageState, state_of

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient
    from faststream.kafka import KafkaBroker

    from middlewares import EnhancedTier

DEADLINE_S = 30.0


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    what: str = "the condition",
    *,
    within_s: float = DEADLINE_S,
    every_s: float = 0.05,
) -> None:
    """Poll `check` (plain or async) until it holds; fail naming `what` after `within_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {within_s:.0f} s: {what}")
        await asyncio.sleep(every_s)


class Spy:
    """A middleware factory that sees every delivery, its final state, and its end.

    Outermost it records how each message finally ended; innermost it sees every run of the
    inner chain (each retry is one more entry in `started`).
    """

    def __init__(self) -> None:
        self.started: list[str] = []
        self.states: list[MessageState] = []
        self.on_start: Callable[[str], None] = lambda event_id: None
        # Messages whose outcome every inner middleware has handled (committed or in the window).
        self.finished = 0

    def __call__(self, msg: Any, /, *, context: Any) -> BaseMiddleware:
        return _SpyRuntime(msg, context=context, spy=self)


class _SpyRuntime(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, spy: Spy) -> None:
        super().__init__(msg, context=context)
        self.spy = spy

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        event_id = msg.headers.get("x-event-id", "")
        self.spy.started.append(event_id)
        self.spy.on_start(event_id)
        try:
            return await call_next(msg)
        finally:
            self.spy.states.append(state_of(msg))

    async def after_processed(self, *exc_info: Any) -> bool | None:
        self.spy.finished += 1  # the inner middlewares' after_processed ran before this one
        return None


class RecordingSink:
    """Stands in for the DLQ writer: records what would be written; can be told to fail."""

    def __init__(self) -> None:
        self.writes: list[tuple[list[ConsumerRecord[Any, Any]], BaseException, int, str | None]] = []
        self.fail_with: Exception | None = None
        self.closed = False

    async def write(
        self,
        broker: Any,
        records: Sequence[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        attempts: int,
        group_id: str | None,
    ) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.writes.append((list(records), error, attempts, group_id))

    async def close(self) -> None:
        self.closed = True


class Sleeps:
    """`RetryPolicy(sleep=Sleeps())`: records each backoff and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def mock_consumer(broker: KafkaBroker, topic: str) -> MagicMock:
    """Give the subscriber of `topic` a consumer whose commits and seeks can be asserted.

    Call inside `TestKafkaBroker(broker)`: the in-memory broker has no consumer that commits.
    """
    consumer = MagicMock(commit=AsyncMock(), seek=MagicMock())
    subscribers: list[Any] = list(broker.subscribers)
    for sub in subscribers:
        if topic in sub.topic_names:
            sub.parser._setup(consumer)
    return consumer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dead_redis() -> aioredis.Redis:
    """A client for a port nobody listens on: every call fails like a Redis outage."""
    # No client-side retries: the middleware's own outage policy is what is under test.
    return aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


async def shut_down(tier: EnhancedTier, *brokers: KafkaBroker) -> None:
    """What `tier.install(app)` does on stop: drain, stop the brokers, then close the tier."""
    await tier.drain()
    await asyncio.gather(*(broker.stop() for broker in brokers))
    await tier.close()


def event(n: int) -> EventEnvelope:
    return EventEnvelope.create(type="order.filled", data={"n": n}, source="engine")


async def send(bootstrap: str, topic: str, *deliveries: tuple[EventEnvelope, int]) -> None:
    """Put envelopes on the wire the way any producer would (same bytes, same headers each time)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for envelope, partition in deliveries:
            headers = [(k, v.encode()) for k, v in envelope.headers().items()]
            await producer.send_and_wait(topic, envelope.to_bytes(), partition=partition, headers=headers)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """The first `count` records of `topic`, read by a plain aiokafka consumer (no group, no framework)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(DEADLINE_S):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records[:count]


async def end_offset(bootstrap: str, topic: str, partition: int = 0) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def group_lag(admin: AIOKafkaAdminClient, bootstrap: str, group: str, topic: str) -> int:
    """End offsets minus the group's committed offsets, summed over the topic's partitions."""
    committed = await admin.list_consumer_group_offsets(group)
    [described] = await admin.describe_topics([topic])
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert partitions, f"topic {topic} has no partitions in the metadata"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(end - (max(committed[tp].offset, 0) if tp in committed else 0) for tp, end in ends.items())


async def lag_drains(admin: AIOKafkaAdminClient, bootstrap: str, group: str, topic: str) -> int:
    """Poll the group's lag until it is 0 (commits land just after processing); return the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        lag = await group_lag(admin, bootstrap, group, topic)
        if lag == 0 or loop.time() > deadline:
            return lag
        await asyncio.sleep(0.1)


async def commit_offset(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    """Set the group's committed offset from outside the group (e.g. as if a commit had been lost)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def committed_offsets(admin: AIOKafkaAdminClient, group: str) -> dict[int, int]:
    """The group's committed offset per partition, as the broker reports it now."""
    committed = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
