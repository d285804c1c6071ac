"""The consumer's commit bookkeeping, driven by a stand-in for aiokafka (real-broker proof is in
tests/integration/clients/test_commits.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from alpha_streaming import RedpandaConsumer, RedpandaSettings
from alpha_streaming._broker import make_broker
from alpha_streaming._errors import ClientStateError, ConfigError

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def rec(tp: TopicPartition, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"v", None, 0, 1, [])


class StandIn:
    """Serves scripted fetches and records commits, like an AIOKafkaConsumer would."""

    def __init__(self, fetches: list[dict[TopicPartition, list[ConsumerRecord]]]) -> None:
        self.fetches = fetches
        self.commits: list[dict[TopicPartition, int]] = []
        self.options: dict[str, Any] = {}
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return {"t"}

    async def getmany(
        self, timeout_ms: int, max_records: int | None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        return self.fetches.pop(0) if self.fetches else {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert all(type(tp) is TopicPartition for tp in offsets)
        self.commits.append(dict(offsets))


def consumer_over(stand_in: StandIn, **kwargs: Any) -> RedpandaConsumer:
    broker = make_broker(RedpandaSettings())

    def build(**options: Any) -> StandIn:
        stand_in.options = options
        return stand_in

    broker.config.broker_config.builder = build
    return RedpandaConsumer.from_broker(broker, topics=["t"], group_id="g", **kwargs)


async def test_auto_commit_is_off_and_stop_commits_nothing() -> None:
    stand_in = StandIn([{TP0: [rec(TP0, 0), rec(TP0, 1)]}])
    async with consumer_over(stand_in) as consumer:
        await anext(consumer)
        await anext(consumer)
    assert stand_in.options["enable_auto_commit"] is False
    assert stand_in.options["auto_offset_reset"] == "earliest"
    assert stand_in.commits == []


async def test_iteration_counts_records_the_caller_moved_past() -> None:
    stand_in = StandIn([{TP0: [rec(TP0, 0), rec(TP0, 1)], TP1: [rec(TP1, 5)]}])
    async with consumer_over(stand_in) as consumer:
        first = await anext(consumer)
        assert await consumer.commit() == {}
        await anext(consumer)
        await anext(consumer)  # now holding TP1@5; TP0@0 and TP0@1 are done
        assert await consumer.commit() == {TP0: 2}
        assert await consumer.commit(first) == {TP0: 1}  # exactly that record, even backwards
    assert stand_in.commits == [{TP0: 2}, {TP0: 1}]


async def test_a_batch_is_processed_once_the_next_batch_is_asked_for() -> None:
    stand_in = StandIn([{TP0: [rec(TP0, 0), rec(TP0, 1)], TP1: [rec(TP1, 7)]}, {TP0: [rec(TP0, 2)]}])
    async with consumer_over(stand_in) as consumer:
        batch = await consumer.getmany()
        assert [(r.partition, r.offset) for r in batch] == [(0, 0), (0, 1), (1, 7)]
        assert await consumer.commit() == {}
        await consumer.getmany()
        assert await consumer.commit() == {TP0: 2, TP1: 8}


async def test_revoked_partitions_lose_uncommitted_progress_and_buffered_records() -> None:
    stand_in = StandIn([{TP0: [rec(TP0, 0), rec(TP0, 1)], TP1: [rec(TP1, 0), rec(TP1, 1)]}])
    async with consumer_over(stand_in) as consumer:
        await anext(consumer)
        await anext(consumer)  # TP0@0 done
        await stand_in.listener.on_partitions_revoked({TP0})
        following = await anext(consumer)
        assert (following.partition, following.offset) == (1, 0)  # TP0@1 was dropped
        assert await consumer.commit() == {}  # TP0's progress went with the partition


async def test_misuse_is_reported_clearly() -> None:
    consumer = consumer_over(StandIn([]))
    with pytest.raises(ClientStateError, match="not started"):
        await consumer.commit()
    with pytest.raises(ConfigError, match="enable_auto_commit"):
        RedpandaConsumer(RedpandaSettings(), topics=["t"], group_id="g", enable_auto_commit=True)
    with pytest.raises(ConfigError, match="non-empty list"):
        RedpandaConsumer(RedpandaSettings(), topics="t", group_id="g")
    prefixed = RedpandaConsumer(RedpandaSettings(group_id_prefix="prod."), topics=["t"], group_id="risk")
    assert prefixed.group_id == "prod.risk"
