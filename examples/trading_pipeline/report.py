"""The demo's report, computed only from what the running system recorded.

Inputs are read back after the run: the records of every pipeline and DLQ topic within the
run's offset window (`wire.read_range`), the services' OpenTelemetry metrics, and each consumer
group's committed offsets against the log end. Nothing here trusts a counter the demo kept.

A record belongs to this run when its correlation chain starts at a tick of this run's feed
session (`Tick.session`), or, for bytes that are no envelope (the poison record), when it
carries the run's `x-demo-run` header. Other runs' records in the window are ignored.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from alpha_streaming import DeadLetter, DlqHeaders, TopicMap, is_dlq_topic
from examples.trading_pipeline.models import EventType
from examples.trading_pipeline.topology import NAMESPACES, TICKS, consumers, pipeline_topics
from examples.trading_pipeline.wire import WireRecord

__all__ = ("RUN_HEADER", "GroupPosition", "Metric", "Report", "RunData", "analyse", "percentile")

RUN_HEADER = "x-demo-run"


@dataclass(frozen=True, slots=True)
class Metric:
    """One value read from a service's meter provider (see `middlewares._instruments`)."""

    name: str
    attributes: Mapping[str, object]
    value: float


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """Where a consumer group stands on one partition after the run."""

    group: str
    partition: TopicPartition
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


@dataclass(frozen=True, slots=True)
class RunData:
    run_id: str
    records: Sequence[WireRecord]
    metrics: Sequence[Metric]
    groups: Sequence[GroupPosition]
    strategies: int
    """Signals the strategy runner emits per tick (one per strategy)."""
    replayed: int = 0
    """What the replay tool said it republished (cross-checked against the wire)."""


@dataclass(slots=True)
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def text(self) -> str:
        verdict = (
            "VERDICT: OK - nothing lost, nothing doubled"
            if self.ok
            else "VERDICT: FAILED\n" + "\n".join(f"  - {reason}" for reason in self.failures)
        )
        return "\n".join([*self.lines, "", verdict])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class _Run:
    """This run's records, indexed by topic, envelope id and cause."""

    def __init__(self, data: RunData) -> None:
        self.data = data
        ticks = [r for r in data.records if r.topic == TICKS and _is_tick_of(r, data.run_id)]
        self.roots = {r.envelope.id for r in ticks if r.envelope is not None}
        self.by_topic: dict[str, list[WireRecord]] = defaultdict(list)
        self.by_id: dict[str, WireRecord] = {}
        self.children: dict[str, list[WireRecord]] = defaultdict(list)
        for record in data.records:
            envelope = record.envelope
            if envelope is None:
                if record.header(RUN_HEADER) != data.run_id:
                    continue
            elif envelope.correlation_id not in self.roots:
                continue
            self.by_topic[record.topic].append(record)
            if envelope is None or is_dlq_topic(record.topic):
                continue
            self.by_id.setdefault(envelope.id, record)
            if envelope.causation_id is not None and not _is_replay(record):
                self.children[envelope.causation_id].append(record)
        # Ids put back by the replay tool, and everything caused by them afterwards.
        self.replayed_ids = {
            r.envelope.id
            for topic, records in self.by_topic.items()
            for r in records
            if not is_dlq_topic(topic) and _is_replay(r) and r.envelope is not None
        }

    def kids(self, event_id: str, topic: str) -> list[WireRecord]:
        return [r for r in self.children.get(event_id, ()) if r.topic == topic]

    def ancestry(self, record: WireRecord) -> list[WireRecord]:
        """`record` and its causes, back to the root tick (as far as the run's records go)."""
        chain = [record]
        seen = set()
        while (cause := chain[-1].envelope.causation_id if chain[-1].envelope else None) is not None:
            if cause in seen or cause not in self.by_id:
                break
            seen.add(cause)
            chain.append(self.by_id[cause])
        return chain


def _is_tick_of(record: WireRecord, run_id: str) -> bool:
    envelope = record.envelope
    return envelope is not None and envelope.type == EventType.TICK and envelope.data.get("session") == run_id


def _is_replay(record: WireRecord) -> bool:
    return record.header(DlqHeaders.REPLAY_COUNT) is not None


def _sum(metrics: Iterable[Metric], name: str, **match: str) -> float:
    return sum(
        m.value for m in metrics if m.name == name and all(m.attributes.get(k) == v for k, v in match.items())
    )


def analyse(data: RunData) -> Report:
    """Build the report and the list of reasons the run misbehaved (empty when it behaved)."""
    run = _Run(data)
    report = Report()
    out = report.lines.append
    out(f"alpha-streaming trading pipeline demo - run {data.run_id}")
    out("")
    _stages(run, report)
    _consumption(run, report)
    _duplicates(run, report)
    _dead_letters(run, report)
    _latency(run, report)
    _trace(run, report)
    _checks(run, report)
    return report


def _stages(run: _Run, report: Report) -> None:
    out = report.lines.append
    out("Events per stage (records on each topic in this run; distinct event ids)")
    for topic in pipeline_topics():
        records = run.by_topic.get(topic, [])
        distinct = {r.envelope.id for r in records if r.envelope is not None}
        extra = []
        poison = sum(1 for r in records if r.envelope is None)
        replays = sum(1 for r in records if _is_replay(r))
        if poison:
            extra.append(f"{poison} poison")
        if replays:
            extra.append(f"{replays} replayed")
        if len(records) - poison - replays > len(distinct):
            extra.append(f"{len(records) - poison - replays - len(distinct)} duplicate copies")
        note = f"  ({', '.join(extra)})" if extra else ""
        out(f"  {topic:<28} {len(records):>6} records {len(distinct):>6} events{note}")
    out("")


def _consumption(run: _Run, report: Report) -> None:
    out = report.lines.append
    metrics = run.data.metrics
    out("Consumption per service (OpenTelemetry counters of each service's MetricsMiddleware)")
    header = (
        f"{'service':<16} {'processed':>9} {'dedup':>6} {'dlq':>4} {'retries':>7} {'failed':>6} {'ms/msg':>7}"
    )
    out("  " + header)
    for consumer in consumers():
        s = consumer.service
        out(
            f"  {s:<16} {_sum(metrics, 'alpha.messages', service=s, outcome='processed'):>9.0f}"
            f" {_sum(metrics, 'alpha.messages', service=s, outcome='deduplicated'):>6.0f}"
            f" {_sum(metrics, 'alpha.messages', service=s, outcome='dead_lettered'):>4.0f}"
            f" {_sum(metrics, 'alpha.messages.retried', service=s):>7.0f}"
            f" {_sum(metrics, 'alpha.messages.failed', service=s):>6.0f}"
            f" {_mean_ms(metrics, s):>7.1f}"
        )
    lagging = [p for p in run.data.groups if p.lag]
    total = len(run.data.groups)
    out(
        f"  consumer groups: {total - len(lagging)}/{total} partitions committed up to the log end"
        + ("" if not lagging else f"; behind: {', '.join(_where(p) for p in lagging)}")
    )
    for p in lagging:
        report.failures.append(f"group {p.group} left {p.lag} record(s) uncommitted on {_where(p)}")
    out("")


def _mean_ms(metrics: Sequence[Metric], service: str) -> float:
    """Mean time per message from the duration histogram (retries and DLQ writes included)."""
    count = _sum(metrics, "alpha.message.duration.count", service=service)
    return 1000 * _sum(metrics, "alpha.message.duration.sum", service=service) / count if count else 0.0


def _where(p: GroupPosition) -> str:
    return f"{p.partition.topic}[{p.partition.partition}]"


def _duplicates(run: _Run, report: Report) -> None:
    out = report.lines.append
    ticks = [r for r in run.by_topic.get(TICKS, []) if r.envelope is not None]
    copies = Counter(r.envelope.id for r in ticks if r.envelope is not None)
    injected = sum(n - 1 for n in copies.values() if n > 1)
    suppressed = _sum(run.data.metrics, "alpha.messages", outcome="deduplicated")
    out(f"Duplicates: {injected} duplicate tick copies on the wire; {suppressed:.0f} suppressed by dedup")
    if suppressed < injected:
        report.failures.append(
            f"{injected} duplicate ticks were published but only {suppressed:.0f} suppressed"
        )
    out("")


def _dead_letters(run: _Run, report: Report) -> None:
    out = report.lines.append
    dlq = {topic: records for topic, records in sorted(run.by_topic.items()) if is_dlq_topic(topic)}
    total = sum(len(records) for records in dlq.values())
    out(f"Dead letters: {total} record(s)")
    for topic, records in dlq.items():
        for record in records:
            try:
                letter = DeadLetter.from_headers(record.headers)
            except ValueError as exc:
                report.failures.append(f"{topic}@{record.offset} lacks dead-letter headers: {exc}")
                continue
            what = (
                record.envelope.type
                if record.envelope is not None
                else f"{len(record.value or b'')} raw bytes"
            )
            out(
                f"  {topic}@{record.offset}: {what} from {letter.original_topic}[{letter.original_partition}]"
                f"@{letter.original_offset}, {letter.exception_fqcn.rsplit('.', 1)[-1]} after "
                f"{letter.attempts} attempt(s) in {letter.service}: {letter.exception_message[:70]}"
            )
    replays = [
        r
        for topic, records in run.by_topic.items()
        if not is_dlq_topic(topic)
        for r in records
        if _is_replay(r)
    ]
    out(f"  replayed to their source topics: {len(replays)} (replay tool reported {run.data.replayed})")
    for record in replays:
        envelope = record.envelope
        if envelope is None:
            continue
        outcomes = [
            r
            for t in _verdict_topics(record.topic)
            for r in run.children.get(envelope.id, ())
            if r.topic == t
        ]
        verdicts = ", ".join(f"{r.topic}@{r.offset}" for r in outcomes) or "nothing"
        out(f"  replayed {record.topic}@{record.offset} ({envelope.id[:13]}...) -> {verdicts}")
    if len(replays) != run.data.replayed:
        report.failures.append(
            f"the replay tool reported {run.data.replayed} replays but {len(replays)} are on the topics"
        )
    out("")


def _verdict_topics(topic: str) -> tuple[str, ...]:
    for ns in NAMESPACES:
        m = TopicMap(ns)
        if topic == m.signals_raw:
            return (m.signals_validated, m.signals_rejected)
        if topic == m.signals_validated:
            return (m.orders_filled,)
    return ()


def _fills(run: _Run) -> list[WireRecord]:
    return [r for ns in NAMESPACES for r in run.by_topic.get(TopicMap(ns).orders_filled, [])]


def _replayed_chain(run: _Run, record: WireRecord) -> bool:
    return any(r.envelope is not None and r.envelope.id in run.replayed_ids for r in run.ancestry(record))


def _latency(run: _Run, report: Report) -> None:
    out = report.lines.append
    samples = []
    for fill in _fills(run):
        chain = run.ancestry(fill)
        root = chain[-1].envelope
        if root is None or root.type != EventType.TICK or _replayed_chain(run, fill):
            continue  # replayed chains waited for an operator; they are not pipeline latency
        samples.append(fill.timestamp_ms - root.ts.timestamp() * 1000)
    if not samples:
        out("End-to-end latency: no fills")
        report.failures.append("no order was filled")
        return
    out(
        f"End-to-end latency, tick created -> order filled on the wire ({len(samples)} fills): "
        f"p50 {percentile(samples, 50):.1f} ms, p99 {percentile(samples, 99):.1f} ms, "
        f"max {max(samples):.1f} ms"
    )
    out("")


def _trace(run: _Run, report: Report) -> None:
    out = report.lines.append
    fills = sorted(_fills(run), key=lambda r: r.timestamp_ms)
    # Prefer a zerodha fill: that engine's venue failed transiently, so its chain shows more.
    fills.sort(key=lambda r: not r.topic.startswith("zerodha."))
    if not fills:
        return
    chain = list(reversed(run.ancestry(fills[0])))
    root = chain[0].envelope
    assert root is not None
    out(f"One trace: correlation {root.correlation_id} ({len(chain)} hops, followed by causation_id)")
    for hop, record in enumerate(chain):
        envelope = record.envelope
        assert envelope is not None
        ms = (envelope.ts - root.ts).total_seconds() * 1000
        cause = f"caused by {envelope.causation_id[:13]}..." if envelope.causation_id else "root"
        out(
            f"  {hop}. +{ms:7.1f} ms  {envelope.source:<16} {record.topic:<26} "
            f"{envelope.type:<17} id {envelope.id[:13]}... {cause}"
        )
    out("")


def _checks(run: _Run, report: Report) -> None:
    fail = report.failures.append
    ticks = {r.envelope.id for r in run.by_topic.get(TICKS, []) if r.envelope is not None}
    if not ticks:
        fail("no tick of this run reached market.ticks")
    # Nothing lost, stage 1: every tick produced exactly one signal per strategy.
    for tick_id in ticks:
        signals = [r for ns in NAMESPACES for r in run.kids(tick_id, TopicMap(ns).signals_raw)]
        if len(signals) != run.data.strategies:
            fail(f"tick {tick_id} produced {len(signals)} signals, expected {run.data.strategies}")
    for ns in NAMESPACES:
        m = TopicMap(ns)
        # Stage 2: every raw signal got exactly one verdict (or sits in the DLQ, not replayed).
        dead = _dead_ids(run, m.signals_raw)
        for record in _originals(run, m.signals_raw):
            envelope = record.envelope
            assert envelope is not None
            verdicts = run.kids(envelope.id, m.signals_validated) + run.kids(envelope.id, m.signals_rejected)
            if len(verdicts) == 1 or (
                not verdicts and envelope.id in dead and envelope.id not in run.replayed_ids
            ):
                continue
            fail(f"raw signal {envelope.id} on {m.signals_raw} got {len(verdicts)} verdicts, expected 1")
        # Stage 3: every validated signal was filled exactly once, in its own namespace.
        for record in _originals(run, m.signals_validated):
            envelope = record.envelope
            assert envelope is not None
            fills = run.children.get(envelope.id, [])
            if len(fills) != 1 or fills[0].topic != m.orders_filled:
                where = ", ".join(r.topic for r in fills) or "none"
                fail(
                    f"validated signal {envelope.id} filled on [{where}], expected once on {m.orders_filled}"
                )
    # Nothing doubled: no event id twice on an output topic, no cause handled twice per key.
    for topic in pipeline_topics():
        if topic == TICKS:
            continue
        records = _originals(run, topic)
        ids = Counter(r.envelope.id for r in records if r.envelope is not None)
        for event_id, n in ids.items():
            if n > 1:
                fail(f"event {event_id} is on {topic} {n} times")
        causes = Counter((r.envelope.causation_id, r.key) for r in records if r.envelope is not None)
        for (cause, key), n in causes.items():
            if n > 1:
                fail(f"{topic} has {n} events caused by {cause} for key {key!r} (processed twice)")
    # The injected faults showed up where they should.
    poison = [r for r in run.by_topic.get(TICKS + ".dlq", []) if r.envelope is None]
    if not poison:
        fail("the poison tick did not reach market.ticks.dlq")
    if _sum(run.data.metrics, "alpha.messages.retried") < 1:
        fail("no retry was recorded although the zerodha venue failed transiently")


def _originals(run: _Run, topic: str) -> list[WireRecord]:
    """Records of `topic` as first published (replays of dead letters left out)."""
    return [r for r in run.by_topic.get(topic, []) if not _is_replay(r)]


def _dead_ids(run: _Run, topic: str) -> set[str]:
    return {r.envelope.id for r in run.by_topic.get(topic + ".dlq", []) if r.envelope is not None}
