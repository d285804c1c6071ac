"""The pipeline's ordering rules, in memory: key chains, handler slots, seek-backs, settings.

A stand-in subscriber's `consume` plays the part FastStream and the gate play in production:
it enters the record's turn, runs a handler that awaits a little, and passes the turn on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker

from alpha_streaming import ConfigError, StreamServiceBuilder
from middlewares import EnhancedTier
from middlewares._gate import Superseded, supersede_after
from middlewares._low_water import CommitWindow
from middlewares._pipeline import Pipeline, Room

WINDOW = CommitWindow(object(), every=1_000, interval_s=60.0)  # never commits here


def record(partition: int, offset: int, key: bytes | None) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("t", partition, offset, 0, 0, key, b"", None, 0, 0, [])


class StandIn:
    """A single-message subscriber whose `consume` enters the gate like the real chain does."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.consumer = object()
        self.ran: list[tuple[Any, int]] = []
        self.running = 0
        self.most_at_once = 0
        self.superseded: list[int] = []
        self.handler_started = asyncio.Event()
        self._fail = fail or set()

    async def consume(self, rec: ConsumerRecord[Any, Any]) -> None:
        ticket = rec._alpha_ticket
        try:
            await ticket.enter()
        except Superseded:
            self.superseded.append(rec.offset)
            return
        self.running += 1
        self.handler_started.set()
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0.001 * (rec.offset % 3))  # uneven handlers
        self.running -= 1
        if rec.offset in self._fail:
            self._fail.discard(rec.offset)
            supersede_after([rec])  # what error routing does when it seeks back to it
            return
        self.ran.append((rec.key, rec.offset))
        ticket.pass_turn()

    async def consume_one(self, rec: ConsumerRecord[Any, Any]) -> None:  # replaced by the lane
        raise AssertionError("not pipelined")

    async def get_msg(self, consumer: Any) -> None:  # replaced by the lane
        raise AssertionError("not pipelined")


StandIn.__name__ = "DefaultSubscriber"  # what `attach` pipelines


async def run(subscriber: StandIn, records: list[ConsumerRecord[Any, Any]], concurrency: int) -> Pipeline:
    pipeline = Pipeline(begin=lambda consumer, recs: None)
    pipeline.set_concurrency(subscriber, concurrency)
    pipeline.attach(subscriber, default=1)
    for rec in records:
        await subscriber.consume_one(rec)
    await asyncio.gather(*pipeline._lanes[subscriber].tasks)
    return pipeline


async def test_with_concurrency_each_key_runs_in_order_and_keys_overlap() -> None:
    subscriber = StandIn()
    records = [record(0, n, b"k%d" % (n % 4)) for n in range(40)]
    await run(subscriber, records, concurrency=3)
    for key in {r.key for r in records}:
        offsets = [offset for k, offset in subscriber.ran if k == key]
        assert offsets == sorted(offsets) and len(offsets) == 10
    assert subscriber.most_at_once == 3


async def test_concurrency_one_keeps_the_partition_order_across_keys() -> None:
    subscriber = StandIn()
    records = [record(n % 2, n, b"k%d" % (n % 5)) for n in range(30)]
    await run(subscriber, records, concurrency=1)
    assert subscriber.most_at_once == 1
    for partition in (0, 1):
        ran = [o for _, o in subscriber.ran if o % 2 == partition]
        assert ran == [r.offset for r in records if r.partition == partition]


async def test_records_behind_one_sought_back_to_are_superseded_not_run() -> None:
    subscriber = StandIn(fail={3})
    records = [record(0, n, None) for n in range(8)]
    await run(subscriber, records, concurrency=1)
    assert [o for _, o in subscriber.ran] == [0, 1, 2]
    assert subscriber.superseded == [4, 5, 6, 7]


async def test_records_read_before_a_seek_back_are_stale_and_not_admitted_after_it() -> None:
    subscriber = StandIn()
    pipeline = Pipeline(begin=lambda consumer, recs: WINDOW.begin(recs))  # claims carry staleness
    pipeline.set_concurrency(subscriber, 2)
    pipeline.attach(subscriber, default=1)
    lane = pipeline._lanes[subscriber]
    lane.room = Room(3)  # a lookahead of three records
    first, other_key, behind = record(0, 3, b"a"), record(0, 4, b"b"), record(0, 5, b"a")
    for rec in (first, other_key, behind):
        await subscriber.consume_one(rec)
    waiting = asyncio.create_task(subscriber.consume_one(record(0, 6, b"c")))  # fetched, no room yet
    await subscriber.handler_started.wait()  # 3 and 4 (another key) entered their handlers
    supersede_after([first])  # 3 is sought back to
    tickets = {rec.offset: rec._alpha_ticket for rec in (first, other_key, behind)}
    assert not tickets[3].stale, "the record sought back to is read again, not stale"
    assert tickets[4].stale and not tickets[4].superseded, "it runs on, but its outcome is not counted"
    assert tickets[5].stale and tickets[5].superseded, "it never starts"
    await asyncio.gather(*lane.tasks)
    await waiting
    assert (b"c", 6) not in subscriber.ran, "read before the seek: it comes again after it"
    await subscriber.consume_one(record(0, 3, b"a"))  # the seek's first record is admitted again
    await asyncio.gather(*lane.tasks)
    assert subscriber.ran[-1] == (b"a", 3) and lane.rewound == {}


async def test_a_revoke_finishes_handlers_under_way_and_leaves_the_rest_to_the_new_owner() -> None:
    subscriber = StandIn()
    pipeline = Pipeline(begin=lambda consumer, recs: None)
    pipeline.attach(subscriber, default=1)
    lane = pipeline._lanes[subscriber]
    lane.fetched.extend([record(1, 9, None), record(0, 9, None)])
    await subscriber.consume_one(record(1, 2, None))  # its handler awaits 2 ms
    await subscriber.consume_one(record(1, 3, None))  # waits for its turn behind it
    await subscriber.handler_started.wait()  # the first handler is under way
    await pipeline.settle({TopicPartition("t", 1)}, timeout_s=5.0)
    assert subscriber.ran == [(None, 2)]
    assert subscriber.superseded == [3]
    assert [(r.partition, r.offset) for r in lane.fetched] == [(0, 9)]


async def test_a_record_still_running_after_a_revoke_decides_neither_commit_nor_seek() -> None:
    subscriber = StandIn()
    pipeline = Pipeline(begin=lambda consumer, recs: WINDOW.begin(recs))  # claims carry staleness
    pipeline.attach(subscriber, default=1)
    lane = pipeline._lanes[subscriber]
    slow = record(1, 2, None)
    lane.consume = lambda rec: asyncio.sleep(0.5)  # a handler outliving the settle timeout
    await subscriber.consume_one(slow)
    await pipeline.settle({TopicPartition("t", 1)}, timeout_s=0.01)
    assert slow._alpha_ticket.stale, "its partition is read from the last commit by its next owner"
    pipeline.assigned({TopicPartition("t", 1)})
    assert lane.rewound == {}
    await asyncio.gather(*lane.tasks)


async def test_shutdown_finishes_handlers_under_way_and_leaves_the_rest_unprocessed() -> None:
    subscriber = StandIn()
    pipeline = Pipeline(begin=lambda consumer, recs: None)
    pipeline.attach(subscriber, default=1)
    for offset in (2, 3, 4):
        await subscriber.consume_one(record(0, offset, None))
    await subscriber.handler_started.wait()
    await pipeline.drain(5.0)
    assert subscriber.ran == [(None, 2)]
    assert subscriber.superseded == [3, 4]


async def test_a_record_waiting_for_room_when_shutdown_begins_is_not_admitted() -> None:
    subscriber = StandIn()
    pipeline = Pipeline(begin=lambda consumer, recs: None)
    pipeline.attach(subscriber, default=1)
    pipeline._lanes[subscriber].room = Room(1)  # a lookahead of one record
    await subscriber.consume_one(record(0, 2, None))
    waiting = asyncio.create_task(subscriber.consume_one(record(0, 3, None)))
    await subscriber.handler_started.wait()
    await pipeline.drain(5.0)
    await waiting  # it got the room only after the drain began
    assert subscriber.ran == [(None, 2)] and subscriber.superseded == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_a_bad_concurrency_is_a_config_error(bad: Any) -> None:
    tier = EnhancedTier("svc", metrics=False)
    broker = KafkaBroker()
    with pytest.raises(ConfigError, match="concurrency must be an integer >= 1"):
        tier.set_concurrency(broker.subscriber("t", group_id="g"), bad)
    with pytest.raises(ConfigError, match="concurrency must be an integer >= 1"):
        EnhancedTier("svc", metrics=False, concurrency=bad)


def test_the_builder_names_the_consumer_with_a_bad_concurrency() -> None:
    async def handle(message: dict[str, Any], topic: str) -> None: ...

    builder = StreamServiceBuilder("svc").add_consumer_handler(
        topics=["t"], group_id="g", handler_func=handle, concurrency=0
    )
    with pytest.raises(ConfigError, match=r"add_consumer_handler #1 \(group_id='g'\): concurrency must be"):
        builder.build()


def test_batch_subscribers_take_no_concurrency() -> None:
    tier = EnhancedTier("svc", metrics=False)
    broker = KafkaBroker()
    with pytest.raises(ConfigError, match="single-message subscribers"):
        tier.set_concurrency(broker.subscriber("t", group_id="g", batch=True), 4)


async def test_a_full_lookahead_admits_again_only_once_its_refill_share_is_free() -> None:
    room = Room(4, refill=2)
    for _ in range(4):
        await room.acquire()
    waiting = asyncio.create_task(room.acquire())
    room.release()
    await asyncio.sleep(0)  # one loop turn: the waiter ran and found too little room
    assert not waiting.done(), "one free place is below the refill share: admission waits"
    room.release()
    await waiting
    await room.acquire()  # the refill's second place
    assert room.free == 0
