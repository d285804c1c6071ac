"""Helpers for the middleware integration tests: group lag and offsets, wire reads and writes, polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream import BaseMiddleware

from alpha_streaming.envelope import EventEnvelope
from middlewares._state import MessageState, state_of

DEADLINE_S = 30.0


class Spy:
    """An outermost middleware factory that sees every delivery, its final state, and its end."""

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


async def eventually(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `check` until it holds; generous deadline, never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


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
    return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())


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


async def lag_drains(admin: AIOKafkaAdminClient, bootstrap: str, group: str, topic: str) -> int:
    """Poll the group's lag until it is 0 (commits land just after processing); return the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        lag = await group_lag(admin, bootstrap, group, topic)
        if lag == 0 or loop.time() > deadline:
            return lag
        await asyncio.sleep(0.1)


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


def event(n: int) -> EventEnvelope:
    return EventEnvelope.create(type="order.filled", data={"n": n}, source="engine")


async def committed_offsets(admin: AIOKafkaAdminClient, group: str) -> dict[int, int]:
    """The group's committed offset per partition, as the broker reports it now."""
    committed = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
