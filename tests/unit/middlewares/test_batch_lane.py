"""The batch lane's rules, in memory: the next batch is prepared early but handled only in turn.

A stand-in batch subscriber's `consume` plays the part FastStream, the gate and dedup play in
production: it enters the batch's turn, runs the handler, then writes its done markers (here: waits
until the test lets it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from middlewares._batch_lane import BatchLane
from middlewares._gate import BATCH_ATTRIBUTE, Superseded, supersede_after, take_claim
from middlewares._low_water import CommitWindow


def no_window(consumer: Any, records: Any) -> None:
    return None  # the test broker's way: nothing to commit


def batch(*offsets: int) -> tuple[ConsumerRecord[Any, Any], ...]:
    return tuple(ConsumerRecord("t", 0, o, 0, 0, None, b"", None, 0, 0, []) for o in offsets)


class StandIn:
    """A batch subscriber: handler, then done markers written when `confirm[first offset]` is set."""

    def __init__(
        self,
        fail_first: set[int] | None = None,
        redelivered: set[int] | None = None,
        rewound: set[int] | None = None,
    ) -> None:
        self.consumer = object()
        self.events: list[str] = []
        self.confirm: dict[int, asyncio.Event] = {}
        self.superseded: list[tuple[int, bool]] = []
        self._fail_first = fail_first or set()
        self._redelivered = redelivered or set()
        self._rewound = rewound or set()

    async def consume(self, records: tuple[ConsumerRecord[Any, Any], ...]) -> None:
        first = records[0].offset
        if first in self._redelivered:  # e.g. Redis down at its claim: it ends before its handler
            return
        if first in self._rewound:  # e.g. a HELD wait timed out: error routing seeks back to it
            self._rewound.discard(first)
            take_claim(records)
            supersede_after(records)
            return
        turn = getattr(records[0], BATCH_ATTRIBUTE)
        confirm = self.confirm.setdefault(first, asyncio.Event())

        async def handler(msg: Any) -> None:
            self.events.append(f"handler {first}")
            if first in self._fail_first:
                self._fail_first.discard(first)
                raise RuntimeError("handler failed")

        while True:  # error routing's retry loop
            try:
                await turn.run(handler, None)
            except Superseded as exc:
                self.superseded.append((first, exc.seek))
                return
            except RuntimeError:
                continue
            break
        await confirm.wait()  # dedup's done markers
        self.events.append(f"done {first}")


async def test_the_next_batch_is_read_early_but_handled_only_after_the_done_markers() -> None:
    subscriber = StandIn()
    lane = BatchLane(subscriber, no_window)
    await lane.admit(batch(0, 1))  # returns with the done markers of 0 still unwritten
    assert subscriber.events == ["handler 0"]
    second = asyncio.create_task(lane.admit(batch(2, 3)))
    await asyncio.sleep(0)  # one loop turn: the second batch is under way, waiting for its turn
    assert subscriber.events == ["handler 0"], "no second handler while the first is unconfirmed"
    subscriber.confirm[0].set()
    await second
    assert subscriber.events == ["handler 0", "done 0", "handler 2"]
    subscriber.confirm[2].set()
    await asyncio.gather(*lane.tasks)
    assert subscriber.events[-1] == "done 2"


async def test_a_batch_whose_handler_fails_is_retried_before_the_next_is_admitted() -> None:
    subscriber = StandIn(fail_first={0})
    lane = BatchLane(subscriber, no_window)
    await lane.admit(batch(0))
    assert subscriber.events == ["handler 0", "handler 0"], "the retry ran before the fetch loop moved on"
    subscriber.confirm[0].set()
    await asyncio.gather(*lane.tasks)


async def test_a_batch_behind_one_sought_back_seeks_back_itself_and_never_runs() -> None:
    subscriber = StandIn()
    lane = BatchLane(subscriber, no_window)
    first = batch(0, 1)
    await lane.admit(first)
    second = asyncio.create_task(lane.admit(batch(2, 3)))
    await asyncio.sleep(0)  # the second batch waits for the first to end
    supersede_after(first)  # the first batch is sought back after its handler (e.g. a failed result publish)
    subscriber.confirm[0].set()
    await second
    await asyncio.gather(*lane.tasks)
    assert subscriber.events == ["handler 0", "done 0"]
    assert subscriber.superseded == [(2, True)], "superseded, and it seeks back to its own records"


async def test_batches_that_never_reach_their_handler_do_not_chain_up() -> None:
    class AllDuplicates:  # dedup acknowledges every batch before the gate
        consumer = object()

        async def consume(self, records: Any) -> None:
            return None

    lane = BatchLane(AllDuplicates(), no_window)
    for first in range(0, 10, 2):
        await lane.admit(batch(first, first + 1))
    assert lane.last is not None and len(lane.last.earlier) == 1, "the batch right before, ended"
    assert lane.last.earlier[0].earlier == (), "and nothing behind it"


async def test_a_batch_ending_before_its_handler_does_not_let_the_next_pass_an_unconfirmed_one() -> None:
    subscriber = StandIn(redelivered={2})
    lane = BatchLane(subscriber, no_window)
    await lane.admit(batch(0, 1))  # handled; its done markers are not written yet
    await lane.admit(batch(2, 3))  # ended without reaching its handler
    third = asyncio.create_task(lane.admit(batch(4, 5)))
    await asyncio.sleep(0)
    assert subscriber.events == ["handler 0"], "batch 0 is still unconfirmed"
    subscriber.confirm[0].set()
    await third
    assert subscriber.events == ["handler 0", "done 0", "handler 4"]
    subscriber.confirm[4].set()
    await asyncio.gather(*lane.tasks)


async def test_the_batch_read_again_after_a_seek_back_runs_and_is_not_superseded() -> None:
    subscriber = StandIn(rewound={0})
    lane = BatchLane(subscriber, no_window)
    await lane.admit(batch(0, 1))  # sought back before its handler
    await lane.admit(batch(0, 1))  # what the consumer reads after that seek
    assert subscriber.events == ["handler 0"] and subscriber.superseded == []
    subscriber.confirm[0].set()
    await asyncio.gather(*lane.tasks)


async def test_a_batch_is_taken_into_the_commit_window_as_it_is_read_and_let_go_if_it_never_began() -> None:
    window = CommitWindow(object(), every=1_000, interval_s=60.0)  # never commits here
    subscriber = StandIn(redelivered={5})  # it ends before error routing takes its claim
    lane = BatchLane(subscriber, lambda consumer, records: window.begin(records))
    window.finish(window.begin(batch(4)))  # committable up to 5
    admitted = asyncio.create_task(lane.admit(batch(5, 6)))
    await asyncio.sleep(0)  # admitted, its processing not run yet
    window.finish(window.begin(batch(7)))  # a later record finishes first
    assert window.pending() == {TopicPartition("t", 0): 5}, "the batch is in flight from its reading on"
    await admitted
    await asyncio.gather(*lane.tasks)
    assert window.pending() == {TopicPartition("t", 0): 5}, "never begun: held at 5, not skipped"
    window.finish(window.begin(batch(5, 6)))  # read again and done
    assert window.pending() == {TopicPartition("t", 0): 8}, "nothing of the first reading is left in flight"
