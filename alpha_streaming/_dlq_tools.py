"""Reading and replaying dead-letter topics, as plain async functions (the CLI wraps them).

Both operations read a DLQ topic up to the end offsets snapshotted when they start, then stop:
records dead-lettered while they run are left for the next run.

- `inspect_dlq` reads from the beginning with no consumer group: it commits nothing and changes
  nothing on the cluster.
- `replay_dlq` reads from the replay group's committed position, republishes each matching
  record to its original topic (original key, value bytes and headers, plus
  `x-dlq-replay-count`), and commits the DLQ offsets only after the replays are acknowledged.

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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka import errors as ak

from alpha_streaming._admin import broker_admin, describe_error, topic_partitions
from alpha_streaming.broker import raw_producer
from alpha_streaming.dlq import DeadLetter, DlqHeaders, KafkaHeaderList, strip_dlq_headers
from alpha_streaming.envelope import EnvelopeHeaders
from alpha_streaming.errors import ConfigError, KafkaClientError, UnknownTopicError

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

__all__ = (
    "DlqEntry",
    "RecordFilter",
    "ReplayAction",
    "ReplayReport",
    "inspect_dlq",
    "parse_filters",
    "replay_dlq",
)

ProgressCallback = Callable[[int, int], None]
"""Called as `(records_done, records_total)` every `progress_every` records."""

FILTER_FIELDS = ("error", "key", "type", "topic")
# A fetch that returns nothing for this long while records are still expected means the
# cluster is unhealthy; better to stop with an error than to hang a script.
STALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One record of a DLQ topic, with its error headers decoded when it is a DLQ record."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    dead_letter: DeadLetter | None
    problem: str | None = None
    """Why the record is not a DLQ record (None when it is one)."""

    @property
    def event_type(self) -> str | None:
        for name, value in self.headers:
            if name == EnvelopeHeaders.TYPE:
                return value.decode("utf-8", "replace")
        return None

    @property
    def key_text(self) -> str | None:
        return None if self.key is None else self.key.decode("utf-8", "replace")

    def to_json(self, preview_bytes: int = 200) -> dict[str, Any]:
        """A JSON-ready view for scripts (`dlq inspect --json`)."""
        out: dict[str, Any] = {
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key_text,
            "event_type": self.event_type,
            "is_dead_letter": self.dead_letter is not None,
            "value_preview": preview(self.value, preview_bytes),
            "value_bytes": None if self.value is None else len(self.value),
        }
        letter = self.dead_letter
        if letter is None:
            out["problem"] = self.problem
            return out
        out.update(
            original_topic=letter.original_topic,
            original_partition=letter.original_partition,
            original_offset=letter.original_offset,
            consumer_group=letter.consumer_group,
            error=letter.exception_fqcn,
            message=letter.exception_message,
            attempts=letter.attempts,
            failed_at=letter.failed_at.isoformat(),
            service=letter.service,
        )
        return out


def preview(value: bytes | None, limit: int = 200) -> str | None:
    """The first `limit` bytes, printable: non-ASCII and control bytes escaped (`\\xNN`)."""
    if value is None:
        return None
    text = value[:limit].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text + ("..." if len(value) > limit else "")


def entry_of(record: Any) -> DlqEntry:
    headers = tuple((name, bytes(value)) for name, value in record.headers or ())
    try:
        letter: DeadLetter | None = DeadLetter.from_headers(headers)
        problem = None
    except ValueError as exc:
        letter, problem = None, str(exc)
    return DlqEntry(
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
        key=record.key,
        value=record.value,
        headers=headers,
        dead_letter=letter,
        problem=problem,
    )


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """`--filter FIELD=VALUE`: same field repeated = any of the values; different fields = all."""

    field: str
    value: str

    def matches(self, entry: DlqEntry) -> bool:
        letter = entry.dead_letter
        if letter is None:
            return False
        if self.field == "error":
            fqcn = letter.exception_fqcn
            return self.value in (fqcn, fqcn.rpartition(".")[2])
        if self.field == "key":
            return entry.key_text == self.value
        if self.field == "type":
            return entry.event_type == self.value
        return letter.original_topic == self.value  # "topic"


def parse_filters(texts: Iterable[str]) -> tuple[RecordFilter, ...]:
    filters = []
    for text in texts:
        name, sep, value = text.partition("=")
        name = name.strip().lower()
        if not sep or name not in FILTER_FIELDS or not value:
            raise ConfigError(
                f"bad filter {text!r}: expected FIELD=VALUE with FIELD one of {', '.join(FILTER_FIELDS)} "
                "(e.g. --filter error=ValueError --filter key=strategy:token)"
            )
        filters.append(RecordFilter(name, value))
    return tuple(filters)


def matches_all(filters: Sequence[RecordFilter], entry: DlqEntry) -> bool:
    by_field: dict[str, list[RecordFilter]] = {}
    for item in filters:
        by_field.setdefault(item.field, []).append(item)
    return all(any(item.matches(entry) for item in group) for group in by_field.values())


@asynccontextmanager
async def _dlq_consumer(broker: KafkaBroker, topic: str, group_id: str | None) -> AsyncIterator[Any]:
    """A consumer assigned every partition of `topic`, positioned at the group's committed offsets
    (or the beginning without a group); stopped on exit."""
    counts = await topic_partitions(broker_admin(broker), [topic])
    if topic not in counts:
        raise UnknownTopicError(
            f"DLQ topic {topic!r} does not exist; check the name (DLQ topics end in .dlq)"
        )
    consumer = broker.config.broker_config.builder(
        group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        with _kafka_errors(f"reading {topic!r}"):
            await consumer.start()
            # assign() rather than subscribe(): no group join, no rebalance wait; with a group id,
            # aiokafka still starts each partition at the group's committed offset.
            consumer.assign([TopicPartition(topic, p) for p in range(counts[topic])])
        yield consumer
    finally:
        await consumer.stop()


class _kafka_errors:  # lower case: it reads like a function: `with _kafka_errors("reading"):`
    """Re-raise aiokafka errors as `KafkaClientError` naming the operation."""

    __slots__ = ("_operation",)

    def __init__(self, operation: str) -> None:
        self._operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, ak.KafkaError):
            raise KafkaClientError(f"{self._operation}: {describe_error(exc)}") from exc


async def _read_bounded(
    consumer: Any, *, on_progress: ProgressCallback | None, progress_every: int
) -> AsyncGenerator[Any, None]:
    """Records from each assigned partition's position up to the end offsets snapshotted now."""
    tps = list(consumer.assignment())
    with _kafka_errors("reading end offsets"):
        ends = await consumer.end_offsets(tps)
        starts = {tp: await consumer.position(tp) for tp in tps}
    total = sum(max(ends[tp] - starts[tp], 0) for tp in tps)
    remaining = {tp for tp in tps if starts[tp] < ends[tp]}
    done = 0
    loop = asyncio.get_running_loop()
    last_fetch = loop.time()
    while remaining:
        with _kafka_errors("fetching records"):
            batch = await consumer.getmany(*remaining, timeout_ms=500)
        for tp, records in batch.items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                yield record
                done += 1
                if on_progress is not None and done % progress_every == 0:
                    on_progress(done, total)
        for tp in list(remaining):
            # position() also moves past control records and compacted gaps.
            with _kafka_errors("reading positions"):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        if batch:
            last_fetch = loop.time()
        elif loop.time() - last_fetch > STALL_TIMEOUT_S:
            raise KafkaClientError(
                f"no records for {STALL_TIMEOUT_S:.0f} s although partitions "
                f"{sorted(tp.partition for tp in remaining)} are not at their end offsets"
            )
    if on_progress is not None and done % progress_every != 0:
        on_progress(done, total)


async def inspect_dlq(
    broker: KafkaBroker,
    topic: str,
    *,
    limit: int | None = None,
    on_progress: ProgressCallback | None = None,
    progress_every: int = 1000,
) -> AsyncIterator[DlqEntry]:
    """Every record of `topic` up to its current end, without a consumer group (commits nothing)."""
    if limit is not None and limit <= 0:
        return
    seen = 0
    async with _dlq_consumer(broker, topic, None) as consumer:
        records = _read_bounded(consumer, on_progress=on_progress, progress_every=progress_every)
        try:
            async for record in records:
                yield entry_of(record)
                seen += 1
                if limit is not None and seen >= limit:
                    return
        finally:
            await records.aclose()


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
    async with _dlq_consumer(broker, topic, group_id) as consumer:
        pending: list[DlqEntry] = []
        records = _read_bounded(consumer, on_progress=on_progress, progress_every=progress_every)
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
