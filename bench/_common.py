"""Shared benchmark plumbing: topics, payloads, interleaved runs, medians and the tables."""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from alpha_streaming import EventEnvelope

__all__ = (
    "Column",
    "Row",
    "Stopwatch",
    "Table",
    "envelope_record",
    "interleaved",
    "payloads",
    "percentiles",
    "prefill_envelopes",
    "print_table",
    "rate_table",
    "topics",
    "wait_assigned",
)


@dataclass
class Row:
    """One measured variant of one case; rates are messages/s, one per run."""

    case: str
    variant: str
    rates: list[float] = field(default_factory=list)
    baseline: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


class Stopwatch:
    """`perf_counter` timing of one run: messages/s over the measured span."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def rate(self, messages: int) -> float:
        return messages / (time.perf_counter() - self.started)


def payloads(count: int, size: int, keys: int = 64) -> list[tuple[bytes, bytes]]:
    """`count` (key, value) pairs: `size` random bytes each, keys spread over `keys` values."""
    blob = os.urandom(count * size)
    return [(f"key-{i % keys}".encode(), blob[i * size : (i + 1) * size]) for i in range(count)]


@asynccontextmanager
async def topics(bootstrap: str, partitions: int = 6) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """A factory of fresh topics (`await new("prefix")`), all deleted when the block ends."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    created: list[str] = []

    async def new(prefix: str) -> str:
        name = f"bench.{prefix}.{uuid.uuid4().hex[:10]}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        # Wait until every partition has a leader, so no run pays for leader election.
        for _ in range(200):
            described = await admin.describe_topics([name])
            parts = described[0].get("partitions") or []
            if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
                break
            await asyncio.sleep(0.05)
        return name

    try:
        yield new
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


async def wait_assigned(assignment: Callable[[], set[Any]], timeout_s: float = 60.0) -> None:
    """Return once `assignment()` is non-empty (the consumer joined its group and got partitions)."""
    async with asyncio.timeout(timeout_s):
        while not assignment():  # noqa: ASYNC110  # polls the consumer's state, no event to wait on
            await asyncio.sleep(0.01)


class Fill(BaseModel):
    """The benchmarks' payload: a fill of the kind the trading pipeline carries."""

    order_id: str
    symbol: str
    qty: int
    price: str
    strategy: str


def fills(count: int) -> list[Fill]:
    return [
        Fill(order_id=f"o-{n}", symbol="NIFTY", qty=n % 50 + 1, price="101.25", strategy="s1")
        for n in range(count)
    ]


async def prefill_envelopes(bootstrap: str, topic: str, events: Sequence[BaseModel]) -> None:
    """Write `events` to `topic` as enhanced-tier envelopes (ids, headers) and wait for all acks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for n, event in enumerate(events):
            key, value, headers = envelope_record(event, n)
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def interleaved(runs: int, variants: Sequence[tuple[Row, Callable[[], Awaitable[float]]]]) -> None:
    """Run each variant once per round, alternating which goes first, and record its rate.

    Interleaving spreads broker warm-up, page cache and GC effects evenly over the variants.
    """
    for round_no in range(runs):
        order = variants if round_no % 2 == 0 else list(reversed(variants))
        for row, measure in order:
            row.rates.append(await measure())


@dataclass(frozen=True)
class Column:
    """One table column: the row key it shows, its header and how a number in it is formatted."""

    key: str
    header: str
    fmt: str = "{}"


@dataclass
class Table:
    """A titled table of raw values (kept for report.json) rendered for the console or Markdown."""

    title: str
    columns: Sequence[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[list[str]]:
        return [[_cell(row.get(col.key), col.fmt) for col in self.columns] for row in self.rows]

    def print(self) -> None:
        print(f"\n{self.title}")
        table = [[col.header for col in self.columns], *self.cells()]
        widths = [max(len(line[i]) for line in table) for i in range(len(self.columns))]
        for n, line in enumerate(table):
            print(
                "  ".join(
                    c.ljust(w) if col.fmt == "{}" else c.rjust(w)
                    for c, w, col in zip(line, widths, self.columns, strict=True)
                ).rstrip()
            )
            if n == 0:
                print("-" * (sum(widths) + 2 * (len(widths) - 1)))
        for note in self.notes:
            print(f"  {note}")

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        aligns = [":--" if col.fmt == "{}" else "--:" for col in self.columns]
        lines = [f"### {self.title}", "", line([c.header for c in self.columns]), line(aligns)]
        lines += [line(cells) for cells in self.cells()]
        lines += ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [c.key for c in self.columns],
            "rows": self.rows,
            "notes": self.notes,
        }


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, list):
        return " ".join(_cell(v, fmt) for v in value)
    return fmt.format(value) if isinstance(value, int | float) and not isinstance(value, bool) else str(value)


RATE_COLUMNS = (
    Column("case", "case"),
    Column("variant", "variant"),
    Column("median", "median msg/s", "{:,.0f}"),
    Column("us", "µs/msg", "{:,.1f}"),
    Column("ratio", "ratio", "{:.3f}"),
    Column("paired", "paired", "{:.3f}"),
    Column("rates", "runs (msg/s)", "{:,.0f}"),
    Column("note", "note"),
)


def rate_table(title: str, rows: Sequence[Row]) -> Table:
    """Median msg/s per variant, its ratio to the case's baseline, and the median paired ratio.

    `ratio` divides the medians; `paired` is the median of per-round ratios (each variant against
    the baseline run next to it), which is steadier when the machine's load drifts during a run.
    """
    baselines = {row.case: row for row in rows if row.baseline}
    table = Table(title, RATE_COLUMNS)
    for row in rows:
        base = baselines.get(row.case)
        ratio = paired = None
        if base is not None and base.median:
            ratio = row.median / base.median
            pairs = [mine / theirs for mine, theirs in zip(row.rates, base.rates, strict=False) if theirs]
            paired = statistics.median(pairs) if pairs else None
        table.rows.append(
            {
                "case": row.case,
                "variant": row.variant,
                "baseline": row.baseline,
                "median": row.median,
                "us": 1e6 / row.median if row.median else None,
                "ratio": ratio,
                "paired": paired,
                "rates": row.rates,
                "note": row.note,
            }
        )
    return table


def print_table(title: str, rows: Sequence[Row]) -> None:
    """Print `rate_table(title, rows)`."""
    rate_table(title, rows).print()


def percentiles(samples: Sequence[float], points: Sequence[float] = (50, 99, 99.9)) -> list[float]:
    """Nearest-rank percentiles of `samples` (NaN when there are none)."""
    ordered = sorted(samples)
    if not ordered:
        return [math.nan for _ in points]
    return [ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)] for p in points]


def envelope_record(
    data: BaseModel, n: int, source: str = "bench"
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the `n`-th event carrying `data`, as the enhanced tier expects it."""
    envelope = EventEnvelope.create(
        type=type(data).__name__, data=data, source=source, key=f"k:{n % 64}", broker="paper"
    )
    headers = [(k, v.encode()) for k, v in envelope.headers().items()]
    return (envelope.key or "").encode(), envelope.to_bytes(), headers
