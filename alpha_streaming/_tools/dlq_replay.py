"""Replaying dead-letter topics: DLQ records back onto their original topics.

`replay_dlq` reads a DLQ topic from the replay group's committed position up to the end offsets
snapshotted when it starts (records dead-lettered meanwhile are left for the next run),
republishes each matching record to its original topic (original key, value bytes and headers,
plus `x-dlq-replay-count`), and commits the DLQ offsets only after the replays are acknowledged.

Committed position: per DLQ partition, the group commits only the contiguous prefix of records
that were replayed. The first record that is not replayed (it does not match the filters, its
original topic is missing, or its send failed) freezes that partition's position, so it is
never lost to future runs; the matching records after it are replayed now and will be seen
(and replayed) again by the next run. A replayed event keeps its envelope id, so the enhanced
tier's dedup suppresses such a second replay once the first one was processed. A record that
is not a DLQ record at all (no error headers) can never be replayed: it is reported as invalid
(the run exits "partial") and passed over, so it does not pin the partition forever; it stays
on the DLQ topic for `dlq inspect`.

Replayed records get a new timestamp (the original one is in the DLQ headers): retention and
lag on the source topic then count from the replay. Two replays of the same DLQ topic with the
same group must not run at the same time (partitions are assigned, not balanced by the group,
so both would replay the same records).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka import errors as ak

from alpha_streaming._admin import broker_admin, describe_error, topic_partitions
from alpha_streaming._broker import raw_producer
from alpha_streaming._dlq import DlqHeaders, KafkaHeaderList, strip_dlq_headers
from alpha_streaming._errors import ConfigError, KafkaClientError
from alpha_streaming._tools.dlq_filters import RecordFilter, matches_all
from alpha_streaming._tools.dlq_reader import DlqEntry, dlq_consumer, entry_of
from alpha_streaming._tools.log_reader import ProgressCallback, read_bounded

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

__all__ = (
    "ReplayAction",
    "ReplayCallback",
    "ReplayReport",
    "replay_dlq",
    "replay_headers",
)


class ReplayAction(StrEnum):
    REPLAYED = "replayed"
    """Republished to the original topic and acknowledged."""
    WOULD_REPLAY = "would-replay"
    """Dry run: would have been republished."""
    SKIPPED = "skipped"
    """Does not match the filters; left in place."""
    FAILED = "failed"
    """Original topic missing or the send failed; a later run tries again."""
    INVALID = "invalid"
    """Not a DLQ record (no error headers): no run can ever replay it, so it is passed over."""


@dataclass(slots=True)
class ReplayReport:
    topic: str
    group_id: str
    dry_run: bool
    read: int = 0
    replayed: int = 0
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    committed: dict[int, int] = field(default_factory=dict)
    """DLQ partition -> offset committed for the replay group by this run."""
    failures: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.failed > 0 or self.invalid > 0


ReplayCallback = Callable[[DlqEntry, ReplayAction, str], None]
"""Called once per record with what was done and a short detail (destination or reason)."""


def replay_headers(entry: DlqEntry) -> KafkaHeaderList:
    """The original headers, with `x-dlq-replay-count` set to one more than before."""
    previous = 0
    headers: KafkaHeaderList = []
    for name, value in strip_dlq_headers(entry.headers):
        if name == DlqHeaders.REPLAY_COUNT:
            try:
                previous = int(value)
            except ValueError:
                previous = 0
            continue
        headers.append((name, value))
    headers.append((DlqHeaders.REPLAY_COUNT, str(previous + 1).encode()))
    return headers


async def replay_dlq(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    filters: Sequence[RecordFilter] = (),
    dry_run: bool = False,
    chunk_size: int = 500,
    on_record: ReplayCallback | None = None,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1000,
) -> ReplayReport:
    """Republish the DLQ records of `topic` to their original topics; see the module docstring.

    `broker` must be connected (it supplies the idempotent producer, the admin client and the
    consumer configuration). Records are sent in chunks of `chunk_size`; after each chunk's
    sends are acknowledged the group commits the replayed prefix of each partition.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    report = ReplayReport(topic=topic, group_id=group_id, dry_run=dry_run)
    run = _ReplayRun(broker, report, filters, on_record)
    async with dlq_consumer(broker, topic, group_id) as consumer:
        pending: list[DlqEntry] = []
        records = read_bounded(consumer, on_progress=on_progress, progress_every=progress_every)
        try:
            async for record in records:
                report.read += 1
                pending.append(entry_of(record))
                if len(pending) >= chunk_size:
                    await run.flush(consumer, pending)
                    pending = []
        finally:
            await records.aclose()
        if pending:
            await run.flush(consumer, pending)
    return report


class _ReplayRun:
    """State of one replay: partition counts of original topics and each partition's commit prefix."""

    __slots__ = ("_blocked", "_broker", "_filters", "_on_record", "_partitions", "_report")

    def __init__(
        self,
        broker: KafkaBroker,
        report: ReplayReport,
        filters: Sequence[RecordFilter],
        on_record: ReplayCallback | None,
    ) -> None:
        self._broker = broker
        self._report = report
        self._filters = tuple(filters)
        self._on_record = on_record
        self._partitions: dict[str, int | None] = {}
        self._blocked: set[int] = set()  # DLQ partitions whose committed position is frozen

    async def flush(self, consumer: Any, entries: Sequence[DlqEntry]) -> None:
        await self._learn_topics(entries)
        producer = None if self._report.dry_run else raw_producer(self._broker)
        sends: list[tuple[DlqEntry, asyncio.Future[Any] | None, str]] = []
        for entry in entries:
            action, detail = self._plan(entry)
            if action is not ReplayAction.REPLAYED:
                sends.append((entry, None, detail))
                self._done(entry, action, detail)
                continue
            if producer is None:
                sends.append((entry, None, detail))
                self._done(entry, ReplayAction.WOULD_REPLAY, detail)
                continue
            letter = entry.dead_letter
            assert letter is not None
            partition = self._target_partition(entry)
            try:
                # send() only queues; in order per partition, acknowledged below.
                future = await producer.send(
                    letter.original_topic,
                    value=entry.value,
                    key=entry.key,
                    partition=partition,
                    headers=replay_headers(entry),
                )
            except ak.KafkaError as exc:
                sends.append((entry, None, f"send failed: {describe_error(exc)}"))
                self._done(entry, ReplayAction.FAILED, f"send failed: {describe_error(exc)}")
                continue
            sends.append((entry, future, detail))

        commits: dict[int, int] = {}
        for entry, future, detail in sends:
            replayed = False
            if future is not None:
                try:
                    meta = await future
                except ak.KafkaError as exc:
                    self._done(entry, ReplayAction.FAILED, f"send failed: {describe_error(exc)}")
                else:
                    replayed = True
                    self._done(entry, ReplayAction.REPLAYED, f"{detail}[{meta.partition}]@{meta.offset}")
            passed_over = future is None and entry.dead_letter is None  # INVALID: never replayable
            if (replayed or passed_over) and entry.partition not in self._blocked:
                commits[entry.partition] = entry.offset + 1
            else:
                self._blocked.add(entry.partition)
        if commits and not self._report.dry_run:
            offsets = {TopicPartition(self._report.topic, p): o for p, o in commits.items()}
            try:
                await consumer.commit(offsets)
            except ak.KafkaError as exc:
                raise KafkaClientError(
                    f"commit replay group {self._report.group_id!r} on {self._report.topic!r}: "
                    f"{describe_error(exc)} (the records were replayed; a new run replays them again)"
                ) from exc
            self._report.committed.update(commits)

    async def _learn_topics(self, entries: Sequence[DlqEntry]) -> None:
        wanted = {e.dead_letter.original_topic for e in entries if e.dead_letter is not None}
        unknown = [name for name in wanted if name not in self._partitions]
        if unknown:
            counts = await topic_partitions(broker_admin(self._broker), unknown)
            for name in unknown:
                self._partitions[name] = counts.get(name)

    def _plan(self, entry: DlqEntry) -> tuple[ReplayAction, str]:
        letter = entry.dead_letter
        if letter is None:
            return ReplayAction.INVALID, f"not a DLQ record ({entry.problem})"
        if self._filters and not matches_all(self._filters, entry):
            return ReplayAction.SKIPPED, "does not match the filters"
        if self._partitions.get(letter.original_topic) is None:
            return ReplayAction.FAILED, f"original topic {letter.original_topic!r} does not exist"
        return ReplayAction.REPLAYED, letter.original_topic

    def _target_partition(self, entry: DlqEntry) -> int | None:
        # The original partition keeps per-key order with the events that followed; if the
        # topic now has fewer partitions, let the key's hash choose.
        assert entry.dead_letter is not None
        count = self._partitions.get(entry.dead_letter.original_topic) or 0
        original = entry.dead_letter.original_partition
        return original if 0 <= original < count else None

    def _done(self, entry: DlqEntry, action: ReplayAction, detail: str) -> None:
        report = self._report
        if action in (ReplayAction.REPLAYED, ReplayAction.WOULD_REPLAY):
            report.replayed += 1
        elif action is ReplayAction.SKIPPED:
            report.skipped += 1
        elif action is ReplayAction.INVALID:
            report.invalid += 1
            report.failures.append(f"{entry.partition}@{entry.offset}: {detail}")
        else:
            report.failed += 1
            report.failures.append(f"{entry.partition}@{entry.offset}: {detail}")
        if self._on_record is not None:
            self._on_record(entry, action, detail)
