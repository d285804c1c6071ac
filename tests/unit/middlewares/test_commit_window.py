"""Coalesced commits: partial flushes for revoked partitions, immediate flushes, the tier's listener.

The consumer is a mock recording its commits (the in-memory broker has none); the real rebalance
is proven in tests/integration/middlewares/test_coalesced_commits_real.py.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import AsyncMock, MagicMock, call

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError
from redis.asyncio import Redis

from alpha_streaming._settings import ConsumerSettings
from middlewares._committer import CommitWindow
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._tier import AUTO_COMMIT_EVERY, EnhancedTier

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


def _record(partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("a", partition, offset, 0, 0, None, b"v", None, 0, 1, [])


def _consumer() -> MagicMock:
    return MagicMock(commit=AsyncMock(), assignment=MagicMock(return_value={A0, A1}))


async def test_a_partial_flush_commits_only_those_partitions_and_keeps_the_rest() -> None:
    consumer = _consumer()
    window = CommitWindow(consumer, every=100, interval_s=60.0)
    await window.add([_record(0, 4)])
    await window.add([_record(1, 9)])
    await window.flush({A0, TopicPartition("b", 0)})
    consumer.commit.assert_awaited_once_with({A0: 5})
    await window.flush()
    assert consumer.commit.await_args_list == [call({A0: 5}), call({A1: 10})]


async def test_add_with_flush_commits_everything_pending_at_once() -> None:
    consumer = _consumer()
    window = CommitWindow(consumer, every=100, interval_s=60.0)
    await window.add([_record(0, 1)])
    await window.add([_record(1, 2)], flush=True)
    consumer.commit.assert_awaited_once_with({A0: 2, A1: 3})


async def test_offsets_of_a_partition_that_moved_away_do_not_block_the_others() -> None:
    consumer = _consumer()
    consumer.assignment.return_value = {A1}

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        if A0 in offsets:
            raise IllegalStateError(f"Partition {A0} is not assigned")

    consumer.commit.side_effect = commit
    window = CommitWindow(consumer, every=2, interval_s=60.0)
    await window.add([_record(0, 1)])
    await window.add([_record(1, 7)])
    assert consumer.commit.await_args_list == [call({A0: 2, A1: 8}), call({A1: 8})]

    consumer.assignment.return_value = {A0, A1}  # nothing moved: the error is real
    with pytest.raises(IllegalStateError):
        await window.add([_record(0, 3)], flush=True)


def _coalescing_tier() -> EnhancedTier:
    # A client that is never connected: nothing here reaches Redis, it only turns dedup on.
    return EnhancedTier("svc", redis=Redis(), metrics=False, consumer=ConsumerSettings(commit_every=100))


async def test_the_tier_listener_commits_the_revoked_partitions_of_every_consumer() -> None:
    tier = _coalescing_tier()
    first, second = _consumer(), _consumer()
    await tier.routing.commits.commit(first, (_record(0, 1), _record(1, 5)))
    await tier.routing.commits.commit(second, (_record(0, 8),))  # another group reading the same partition

    await tier.listener.on_partitions_revoked({A0})
    first.commit.assert_awaited_once_with({A0: 2})
    second.commit.assert_awaited_once_with({A0: 9})
    await tier.listener.on_partitions_assigned({A0})
    await tier.close()
    assert first.commit.await_args_list[-1] == call({A1: 6}), "the rest waited for its own flush"


async def test_a_failed_revoke_commit_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tier = _coalescing_tier()
    consumer = _consumer()
    consumer.commit.side_effect = RuntimeError("coordinator gone")
    await tier.routing.commits.commit(consumer, (_record(0, 1),))
    await tier.listener.on_partitions_revoked({A0})
    assert "commit on partition revoke failed (RuntimeError: coordinator gone)" in caplog.text


def test_commit_every_auto_coalesces_only_with_dedup() -> None:
    with_dedup = EnhancedTier("svc", redis=Redis(), metrics=False)
    without = EnhancedTier("svc", metrics=False)
    assert (with_dedup.routing.commit_every, without.routing.commit_every) == (AUTO_COMMIT_EVERY, 1)


async def test_drain_commits_the_pending_offsets_and_each_outcome_until_close() -> None:
    tier = _coalescing_tier()
    consumer = _consumer()
    await tier.routing.commits.commit(consumer, (_record(0, 1),))
    await tier.drain()
    await tier.routing.commits.commit(consumer, (_record(0, 2),))  # finished while the broker stops
    assert consumer.commit.await_args_list == [call({A0: 2}), call({A0: 3})]
    await tier.close()
    await tier.routing.commits.commit(consumer, (_record(0, 3),))  # started again: coalescing again
    assert consumer.commit.await_count == 2


async def test_routing_without_a_window_commits_each_outcome_at_once() -> None:
    routing = ErrorRoutingMiddleware(service="svc")
    consumer = _consumer()
    await routing.commits.commit(consumer, (_record(0, 1),))
    await routing.commits.commit(consumer, (_record(1, 4),))
    assert consumer.commit.await_args_list == [call({A0: 2}), call({A1: 5})]
