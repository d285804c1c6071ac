"""`DeadLetterOnce`: a poison record read again after its DLQ write is not dead-lettered twice.

The source offset is committed right after the DLQ write is acknowledged, but that commit can be
lost: the group took the partition away meanwhile (a handler slower than `max.poll.interval.ms`,
a rebalance) or the process died. The partition's next owner then reads the record again and its
handler fails again. With dedup on, the write is guarded by a dedup claim on the *source record*
(topic, partition, offset, timestamp), in the consumer group's dedup store: claimed before the
write, marked done after it. Not the event id: a DLQ replay puts the record back at a new offset,
and if it fails again it must be dead-lettered again. Redis down: the record is written anyway
(a duplicate DLQ record is better than none).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from alpha_streaming._errors import RedeliveryRequested
from middlewares._dedup_runtime import OUTAGE_ERRORS
from middlewares._dedup_store import lease_key
from middlewares._lease_scripts import CLAIMED, DONE

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from faststream.kafka import KafkaBroker

    from middlewares._dead_letter import DeadLetterSink
    from middlewares._dedup import DeduplicationMiddleware

__all__ = ("DeadLetterOnce", "source_id")

log = logging.getLogger(__name__)

_OWNER_PREFIX = f"dlq-{uuid.uuid4().hex[:16]}-"
_owner_numbers = itertools.count()


def source_id(record: ConsumerRecord[Any, Any]) -> str:
    """The dedup id of one delivery source: the same on every redelivery, new on a replay."""
    return f"dlq@{record.topic}/{record.partition}/{record.offset}/{record.timestamp}"


class DeadLetterOnce:
    """A `DeadLetterSink` that writes a record only if no earlier delivery of it was written."""

    def __init__(self, sink: DeadLetterSink, dedup: DeduplicationMiddleware) -> None:
        self.sink, self._dedup = sink, dedup

    async def write(
        self,
        broker: KafkaBroker,
        records: Sequence[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        attempts: int,
        group_id: str | None,
    ) -> None:
        prefix = self._dedup.key_prefix(group_id)
        owner = f"{_OWNER_PREFIX}{next(_owner_numbers)}"
        try:
            claimed = await self._claim(prefix, [source_id(r) for r in records], owner)
        except OUTAGE_ERRORS as exc:
            log.warning("dead-letter guard: Redis unavailable (%s); writing without it", exc)
            await self.sink.write(broker, records, error, attempts=attempts, group_id=group_id)
            return
        todo = [r for r in records if source_id(r) in claimed]
        if len(todo) < len(records):
            log.info("%d record(s) already dead-lettered by an earlier delivery", len(records) - len(todo))
        if not todo:
            return
        leases, store = self._dedup.leases, self._dedup.store
        leases.hold(owner, [lease_key(prefix, i) for i in claimed], prefix)
        try:
            await self.sink.write(broker, todo, error, attempts=attempts, group_id=group_id)
        except BaseException:
            leases.drop(owner)
            await self._quietly(store.release(prefix, list(claimed), owner))  # the next delivery writes
            raise
        leases.drop(owner)
        await self._quietly(store.done(prefix, list(claimed), owner))

    async def close(self) -> None:
        await self.sink.close()

    async def _claim(self, prefix: str, ids: list[str], owner: str) -> set[str]:
        """The ids now ours to write; waits while another delivery holds one (it is writing it)."""
        dedup = self._dedup
        pending, claimed = ids, set[str]()
        deadline = time.monotonic() + dedup.wait_s
        delay = 0.02
        while True:
            answers = await dedup.store.claim(prefix, pending, owner)
            claimed.update(i for i, answer in zip(pending, answers, strict=True) if answer == CLAIMED)
            pending = [i for i, answer in zip(pending, answers, strict=True) if answer not in (CLAIMED, DONE)]
            if not pending:
                return claimed
            if time.monotonic() >= deadline:
                await self._quietly(dedup.store.release(prefix, list(claimed), owner))
                raise RedeliveryRequested(
                    f"{len(pending)} record(s) still being dead-lettered by another consumer "
                    f"after {dedup.wait_s:.1f} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    @staticmethod
    async def _quietly(request: Awaitable[Any]) -> None:
        try:
            await request
        except OUTAGE_ERRORS as exc:  # a lease expires on its own
            log.warning("dead-letter guard: Redis unavailable (%s)", exc)
