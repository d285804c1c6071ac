"""`BatchLane`: a batch subscriber reads and prepares its next batch while this one is confirmed.

FastStream's batch subscriber fetches batch n+1 only when batch n's processing returned, and about
half of that processing is waiting on Redis: the claims before the handler, the done markers after
it (bench/README.md, "Issue 12, part 4"). The lane replaces the subscriber's `consume_one` hook:
batch n is processed in a task, and the fetch loop moves on as soon as its handler succeeded (its
outputs acknowledged), so n's done markers and commit are written while n+1 is fetched, parsed and
claimed. n+1's handler waits for n's processing to end (`BatchTurn`, in the gate): at most one batch
handler is ever unconfirmed, as without the lane. A batch whose handler did not succeed (retries,
a dead-letter write, a seek back) is waited for to its end before anything more is fetched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from middlewares._gate import BATCH_ATTRIBUTE, BatchTurn

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    from middlewares._low_water import Claim

__all__ = ("BatchLane", "batch_subscriber")


def batch_subscriber(subscriber: Any) -> bool:
    """FastStream's plain batch Kafka subscriber (its loop calls `consume_one` with a tuple)."""
    return type(subscriber).__name__ == "BatchSubscriber" and hasattr(subscriber, "consume_one")


class BatchLane:
    """One batch subscriber's batch being confirmed and the one being prepared."""

    def __init__(
        self, subscriber: Any, begin: Callable[[Any, Collection[ConsumerRecord[Any, Any]]], Claim | None]
    ) -> None:
        """`begin(consumer, records)` takes records into the commit window (error routing's)."""
        self.subscriber = subscriber
        self.consume = subscriber.consume
        self._begin = begin
        self.last: BatchTurn | None = None
        self.live: set[BatchTurn] = set()
        """Batches whose processing has not ended."""
        self.closing = False

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [turn.task for turn in self.live if turn.task is not None]

    async def admit(self, batch: tuple[ConsumerRecord[Any, Any], ...]) -> None:
        """The subscriber's `consume_one`: returns once the batch's handler succeeded or it ended."""
        if self.closing:
            await asyncio.Event().wait()  # the fetch loop stays here until the subscriber stops it
        loop = asyncio.get_running_loop()
        # Behind every batch still being processed, and the last one even if it ended: a seek
        # back it makes after this batch was read takes this batch back too.
        earlier = set(self.live)
        if self.last is not None:
            self.last.earlier = self.last.watched = ()  # past its gate, or ended: settled
            earlier.add(self.last)
        turn = BatchTurn(tuple(earlier), loop.create_future())
        # Taken now, as it was read: a seek back made later holds commits below the batch, and a
        # record taken later than that seek would lift the hold (`CommitWindow.begin`).
        turn.claim = self._begin(self.subscriber.consumer, batch)
        setattr(batch[0], BATCH_ATTRIBUTE, turn)  # error routing and the gate look at the first record
        task = turn.task = loop.create_task(self._process(batch, turn))
        self.live.add(turn)
        self.last = turn
        await asyncio.wait((task, turn.handled), return_when=asyncio.FIRST_COMPLETED)

    async def _process(self, batch: tuple[ConsumerRecord[Any, Any], ...], turn: BatchTurn) -> None:
        try:
            await self.consume(batch)
        finally:
            self.live.discard(turn)
            claim = turn.claim
            if claim is not None and not turn.claim_taken:  # processing never began (e.g. stopped first)
                claim.window.unfinished(claim)
