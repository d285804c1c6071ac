"""Background commits by low-water mark: never past unfinished work, awaited on revoke and shutdown.

The consumer is a mock recording its commits (the in-memory broker has none); the real rebalance
is proven in tests/integration/middlewares/test_coalesced_commits_real.py.
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import AsyncMock, MagicMock, call

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError
from redis.asyncio import Redis

from alpha_streaming._settings import ConsumerSettings
from middlewares._committer import Commits, CommitWindow
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._tier import AUTO_COMMIT_EVERY, EnhancedTier

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


def _record(partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("a", partition, offset, 0, 0, None, b"v", None, 0, 1, [])


def _consumer() -> MagicMock:
    return MagicMock(commit=AsyncMock(), seek=MagicMock(), assignment=MagicMock(return_value={A0, A1}))


def _window(consumer: MagicMock, every: int = 100, interval_s: float = 60.0) -> CommitWindow:
    return CommitWindow(consumer, every=every, interval_s=interval_s)


async def _commits(consumer: MagicMock, count: int) -> None:
    for _ in range(200):  # polled, generous deadline (~2 s)
        if consumer.commit.await_count >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{consumer.commit.await_count} commit(s), expected {count}")


async def test_a_commit_never_passes_a_record_still_in_flight() -> None:
    consumer = _consumer()
    window = _window(consumer)
    claims = {offset: window.begin([_record(0, offset)]) for offset in (10, 11, 12)}
    window.finish(claims[11])
    window.finish(claims[12])
    await window.flush()
    consumer.commit.assert_not_called()  # 10 is in flight: nothing above it is committable yet
    window.finish(claims[10])
    await window.flush()
    consumer.commit.assert_awaited_once_with({A0: 13})


async def test_a_record_sought_back_holds_commits_until_it_is_read_again() -> None:
    consumer = _consumer()
    commits = Commits(every=100, interval_s=60.0)
    first = commits.begin(consumer, [_record(0, 5)])
    await commits.finish(first)
    redelivered = [_record(0, 6)]
    claim = commits.begin(consumer, redelivered)
    later = commits.begin(consumer, [_record(0, 7)])  # already fetched when 6 was sought back
    await commits.rewind(consumer, claim, redelivered)
    assert consumer.commit.await_args_list == [call({A0: 6})], "what was finished below it"
    consumer.seek.assert_called_once_with(A0, 6)
    await commits.finish(later, flush=True)
    assert consumer.commit.await_count == 1, "7 finished, but 6 is held: nothing passes it"
    again = commits.begin(consumer, redelivered)  # the consumer reads on from 6
    await commits.finish(again, flush=True)
    assert consumer.commit.await_args_list[-1] == call({A0: 8})


async def test_a_record_finished_past_one_sought_back_to_does_not_let_commits_skip_ahead() -> None:
    consumer = _consumer()
    commits = Commits(every=100, interval_s=60.0)
    claims = {offset: commits.begin(consumer, [_record(0, offset)]) for offset in range(5)}
    await commits.finish(claims[0])
    await commits.finish(claims[3])  # a duplicate: dedup skipped it before 1 and 2 had their turn
    await commits.rewind(consumer, claims[1], [_record(0, 1)])  # 1 is redelivered: sought back to
    consumer.seek.assert_called_once_with(A0, 1)
    for stale in (claims[2], claims[4]):  # read before the seek: their copies read again count
        assert stale is not None
        stale.stale = True  # what the pipeline marks when it supersedes them
        await commits.finish(stale)
    again = commits.begin(consumer, [_record(0, 1)])
    await commits.finish(again, flush=True)
    assert consumer.commit.await_args_list[-1] == call({A0: 2}), "2 is not read again yet"


async def test_commits_go_out_in_the_background_by_count_and_by_time() -> None:
    consumer = _consumer()
    commits = Commits(every=3, interval_s=60.0)
    for offset in (0, 1):
        await commits.finish(commits.begin(consumer, [_record(0, offset)]))
    consumer.commit.assert_not_called()
    await commits.finish(commits.begin(consumer, [_record(1, 4)]))  # the third outcome: due
    await _commits(consumer, 1)
    consumer.commit.assert_awaited_once_with({A0: 2, A1: 5})

    timed = Commits(every=100, interval_s=0.02)
    await timed.finish(timed.begin(consumer, [_record(0, 2)]))
    await _commits(consumer, 2)
    assert consumer.commit.await_args_list[-1] == call({A0: 3})


async def test_a_failed_background_commit_is_logged_and_carried_by_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = _consumer()
    consumer.commit.side_effect = [RuntimeError("coordinator moving"), None]
    commits = Commits(every=1_000, interval_s=0.02)
    await commits.finish(commits.begin(consumer, [_record(0, 1)]))
    await _commits(consumer, 1)
    await asyncio.sleep(0.01)
    assert "background commit failed (RuntimeError: coordinator moving)" in caplog.text
    await commits.finish(commits.begin(consumer, [_record(0, 2)]))
    await _commits(consumer, 2)
    assert consumer.commit.await_args_list[-1] == call({A0: 3})


async def test_a_partial_flush_commits_only_those_partitions_and_keeps_the_rest() -> None:
    consumer = _consumer()
    window = _window(consumer)
    window.finish(window.begin([_record(0, 4)]))
    window.finish(window.begin([_record(1, 9)]))
    await window.flush({A0, TopicPartition("b", 0)})
    consumer.commit.assert_awaited_once_with({A0: 5})
    await window.flush()
    assert consumer.commit.await_args_list == [call({A0: 5}), call({A1: 10})]


async def test_offsets_of_a_partition_that_moved_away_do_not_block_the_others() -> None:
    consumer = _consumer()
    consumer.assignment.return_value = {A1}

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        if A0 in offsets:
            raise IllegalStateError(f"Partition {A0} is not assigned")

    consumer.commit.side_effect = commit
    window = _window(consumer)
    window.finish(window.begin([_record(0, 1)]))
    window.finish(window.begin([_record(1, 7)]))
    await window.flush()
    assert consumer.commit.await_args_list == [call({A0: 2, A1: 8}), call({A1: 8})]

    consumer.assignment.return_value = {A0, A1}  # nothing moved: the error is real
    window.finish(window.begin([_record(0, 3)]))
    with pytest.raises(IllegalStateError):
        await window.flush()


def _tier() -> EnhancedTier:
    # A client that is never connected: nothing here reaches Redis, it only turns dedup on.
    return EnhancedTier("svc", redis=Redis(), metrics=False, consumer=ConsumerSettings(commit_every=100))


async def _finished(commits: Commits, consumer: Any, *records: ConsumerRecord[Any, Any]) -> None:
    await commits.finish(commits.begin(consumer, records))


async def test_the_tier_listener_commits_the_revoked_partitions_of_every_consumer() -> None:
    tier = _tier()
    first, second = _consumer(), _consumer()
    await _finished(tier.routing.commits, first, _record(0, 1), _record(1, 5))
    await _finished(tier.routing.commits, second, _record(0, 8))  # another group, same partition
    in_flight = tier.routing.commits.begin(first, [_record(0, 2)])

    await tier.listener.on_partitions_revoked({A0})
    first.commit.assert_awaited_once_with({A0: 2})  # finished work only: 2 is still in flight
    second.commit.assert_awaited_once_with({A0: 9})
    await tier.listener.on_partitions_assigned({A0})
    await tier.routing.commits.finish(in_flight)  # finished after the revoke: its new owner reads it
    await tier.close()
    assert first.commit.await_args_list[-1] == call({A1: 6}), "the rest waited for its own flush"
    assert all(A0 not in c.args[0] for c in first.commit.await_args_list[1:]), "A0 was revoked"


async def test_a_failed_revoke_commit_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tier = _tier()
    consumer = _consumer()
    consumer.commit.side_effect = RuntimeError("coordinator gone")
    await _finished(tier.routing.commits, consumer, _record(0, 1))
    await tier.listener.on_partitions_revoked({A0})
    assert "commit on partition revoke failed (RuntimeError: coordinator gone)" in caplog.text


def test_commit_every_auto_commits_in_the_background_with_or_without_dedup() -> None:
    with_dedup = EnhancedTier("svc", redis=Redis(), metrics=False)
    without = EnhancedTier("svc", metrics=False)
    assert with_dedup.routing.commit_every == without.routing.commit_every == AUTO_COMMIT_EVERY


async def test_drain_commits_the_finished_work_and_each_outcome_until_close() -> None:
    tier = _tier()
    consumer = _consumer()
    await _finished(tier.routing.commits, consumer, _record(0, 1))
    await tier.drain()
    await _finished(tier.routing.commits, consumer, _record(0, 2))  # finished while the broker stops
    assert consumer.commit.await_args_list == [call({A0: 2}), call({A0: 3})]
    await tier.close()
    await _finished(tier.routing.commits, consumer, _record(0, 3))  # started again: background again
    assert consumer.commit.await_count == 2
    await tier.close()


async def test_routing_with_commit_every_1_commits_each_outcome_at_once() -> None:
    routing = ErrorRoutingMiddleware(service="svc", commit_every=1)
    consumer = _consumer()
    await _finished(routing.commits, consumer, _record(0, 1))
    await _finished(routing.commits, consumer, _record(1, 4))
    assert consumer.commit.await_args_list == [call({A0: 2}), call({A1: 5})]
