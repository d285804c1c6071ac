"""A stand-in for `AIOKafkaConsumer` that serves scripted fetches and records commits."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError

from alpha_streaming import RedpandaConsumer, RedpandaSettings
from alpha_streaming._broker import make_broker

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def rec(tp: TopicPartition, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"v", None, 0, 1, [])


class StandIn:
    """Like aiokafka: a commit of a partition not assigned raises `IllegalStateError`."""

    def __init__(self, fetches: list[dict[TopicPartition, list[ConsumerRecord]]]) -> None:
        self.fetches = fetches
        self.commits: list[dict[TopicPartition, int]] = []
        self.attempts = 0
        self.attempted = asyncio.Event()  # set on every commit attempt, failed or not
        self.failure: Exception | None = None  # raised by every commit while set
        self.assigned = {TP0, TP1}
        self.options: dict[str, Any] = {}
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return {"t"}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def getmany(
        self, timeout_ms: int, max_records: int | None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        return self.fetches.pop(0) if self.fetches else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert all(type(tp) is TopicPartition for tp in offsets)
        self.attempts += 1
        self.attempted.set()
        if self.failure is not None:
            raise self.failure
        for tp in offsets:
            if tp not in self.assigned:
                raise IllegalStateError(f"Partition {tp} is not assigned")
        self.commits.append(dict(offsets))

    async def next_attempt(self) -> None:
        """Wait for the next commit attempt (a background one: nothing else is awaiting)."""
        self.attempted.clear()
        async with asyncio.timeout(5):
            await self.attempted.wait()


def consumer_over(stand_in: StandIn, **kwargs: Any) -> RedpandaConsumer:
    broker = make_broker(RedpandaSettings())

    def build(**options: Any) -> StandIn:
        stand_in.options = options
        return stand_in

    broker.config.broker_config.builder = build
    return RedpandaConsumer.from_broker(broker, topics=["t"], group_id="g", **kwargs)
