"""The consumer's commit bookkeeping, driven by a stand-in for aiokafka (real-broker proof is in
tests/integration/clients/test_commits.py)."""

from __future__ import annotations

import pytest

from alpha_streaming import RedpandaConsumer, RedpandaSettings
from alpha_streaming._errors import ClientStateError, ConfigError
from tests.unit.clients._stand_in import TP0, TP1, StandIn, consumer_over, rec


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
        assert await consumer.commit(first, wait=True) == {}  # a partition's offset never goes back
    assert stand_in.commits == [{TP0: 2}]


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
    with pytest.raises(ClientStateError, match="not started"):
        await consumer.flush_commits()
    with pytest.raises(ConfigError, match="commit_every"):
        RedpandaConsumer(RedpandaSettings(), topics=["t"], group_id="g", commit_every=0)
    with pytest.raises(ConfigError, match="non-empty list"):
        RedpandaConsumer(RedpandaSettings(), topics="t", group_id="g")
    prefixed = RedpandaConsumer(RedpandaSettings(group_id_prefix="prod."), topics=["t"], group_id="risk")
    assert prefixed.group_id == "prod.risk"
