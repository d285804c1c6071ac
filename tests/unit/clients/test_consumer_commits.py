"""`commit(record)`'s fast path: recorded at once, committed in the background, on flush, on revoke
and on stop, errors surfaced (a stand-in for aiokafka; real-broker proof in
tests/integration/clients/test_fast_commits.py)."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from alpha_streaming import RedpandaConsumer
from alpha_streaming._clients import ConsumedRecord
from alpha_streaming._errors import ClientStateError, KafkaClientError
from tests.unit.clients._stand_in import TP0, TP1, StandIn, consumer_over, rec

LATER = {"commit_every": 10_000, "commit_interval_s": 3600.0}  # no background commit in the test


def five_and_two() -> StandIn:
    return StandIn([{TP0: [rec(TP0, n) for n in range(5)], TP1: [rec(TP1, 0), rec(TP1, 1)]}])


async def commit_next(consumer: RedpandaConsumer, count: int) -> None:
    for _ in range(count):
        assert await consumer.commit(await anext(consumer)) == {}  # left to the background


async def test_commit_records_exact_offsets_and_flush_commits_them() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, **LATER) as consumer:
        await commit_next(consumer, 4)  # TP0@0..3
        await anext(consumer)  # TP0@4: read, never committed
        await commit_next(consumer, 1)  # TP1@0
        assert stand_in.commits == []
        assert await consumer.flush_commits() == {TP0: 4, TP1: 1}
        assert await consumer.flush_commits() == {}
        behind = ConsumedRecord(rec(TP0, 1))
        assert await consumer.commit(behind, wait=True) == {}  # a partition's offset never goes back
    assert stand_in.commits == [{TP0: 4, TP1: 1}]


async def test_wait_commits_now() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, **LATER) as consumer:
        assert await consumer.commit(await anext(consumer), wait=True) == {TP0: 1}
        assert stand_in.commits == [{TP0: 1}]


async def test_background_commit_after_commit_every_records() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, commit_every=3, commit_interval_s=3600.0) as consumer:
        await commit_next(consumer, 3)
        await stand_in.next_attempt()
        assert stand_in.commits == [{TP0: 3}]


async def test_background_commit_after_the_interval() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, commit_every=10_000, commit_interval_s=0.01) as consumer:
        await commit_next(consumer, 2)
        await stand_in.next_attempt()
        assert stand_in.commits == [{TP0: 2}]


async def test_stop_commits_what_was_recorded() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, **LATER) as consumer:
        await commit_next(consumer, 2)
    assert stand_in.commits == [{TP0: 2}]


async def test_a_failed_background_commit_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, commit_every=2, commit_interval_s=3600.0) as consumer:
        stand_in.failure = KafkaConnectionError("broker gone")
        with caplog.at_level(logging.WARNING, "alpha_streaming"):
            await commit_next(consumer, 2)
            await stand_in.next_attempt()
        assert "background commit failed (KafkaClientError" in caplog.text
        stand_in.failure = None
        assert await consumer.flush_commits() == {TP0: 2}  # the failed offsets were kept
    assert stand_in.commits == [{TP0: 2}]


async def test_a_commit_that_keeps_failing_raises_on_flush_and_on_stop() -> None:
    stand_in = five_and_two()
    consumer = consumer_over(stand_in, **LATER)
    await consumer.start()
    await commit_next(consumer, 2)
    stand_in.failure = KafkaConnectionError("broker gone")
    with pytest.raises(KafkaClientError, match="broker gone"):
        await consumer.flush_commits()
    with pytest.raises(KafkaClientError, match="broker gone"):
        await consumer.stop()
    with pytest.raises(ClientStateError):  # stopped all the same
        await consumer.flush_commits()
    assert stand_in.attempts == 2 and stand_in.commits == []


async def test_offsets_of_a_partition_no_longer_owned_are_dropped_and_reported() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, commit_every=2, commit_interval_s=3600.0) as consumer:
        stand_in.assigned = {TP1}  # TP0 moved away without a revoke reaching this member
        await commit_next(consumer, 1)  # TP0@0
        assert await consumer.commit(ConsumedRecord(rec(TP1, 0))) == {}
        await stand_in.next_attempt()  # the background commit: TP0 refused, TP1 committed
        assert stand_in.commits == [{TP1: 1}]
        with pytest.raises(KafkaClientError, match=r"recorded for t\[0\] were not committed"):
            await consumer.flush_commits()
        assert await consumer.flush_commits() == {}  # reported once


async def test_revoke_commits_recorded_offsets_before_the_partitions_go() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, **LATER) as consumer:
        await commit_next(consumer, 2)  # TP0@0..1
        assert await consumer.commit(ConsumedRecord(rec(TP1, 0))) == {}
        await stand_in.listener.on_partitions_revoked({TP0})
        assert stand_in.commits == [{TP0: 2, TP1: 1}]
        following = await anext(consumer)
        assert (following.partition, following.offset) == (1, 0)  # TP0's buffered records are gone


async def test_a_failed_commit_on_revoke_is_reported_by_the_next_flush() -> None:
    stand_in = five_and_two()
    async with consumer_over(stand_in, **LATER) as consumer:
        await commit_next(consumer, 2)  # TP0@0..1
        assert await consumer.commit(ConsumedRecord(rec(TP1, 0))) == {}
        stand_in.failure = KafkaConnectionError("broker gone")
        await stand_in.listener.on_partitions_revoked({TP0})
        stand_in.failure = None
        with pytest.raises(KafkaClientError, match=r"recorded for t\[0\] were not committed"):
            await consumer.flush_commits()  # TP1's offset, still owned, is committed first
        assert stand_in.commits == [{TP1: 1}]
