"""Issue 12's targets against this run's figures: the first table of `report.md`.

Each target reads one row of a section's table (matched by case and variant prefixes); a target
whose section did not run says so. A missed one shows what bounds it, as the profiles in
bench/README.md ("Issue 12") found it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench._common import Column, Table

__all__ = ("scorecard",)

Rows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class _Target:
    figure: str
    wanted: str
    section: str
    case: str
    variant: str
    measured: Callable[[dict[str, Any]], tuple[str, bool]]
    bound: str
    """What bounds the figure, from the profiles in bench/README.md: shown when it is missed."""


def _ratio(least: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def read(row: dict[str, Any]) -> tuple[str, bool]:
        ratio = row.get("ratio") or 0.0
        return f"{ratio:.2f}x ({row['median']:,.0f} msg/s)", ratio >= least

    return read


def _ordered_rate(least: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def read(row: dict[str, Any]) -> tuple[str, bool]:
        ordered = "out of key order: 0" in str(row.get("note", ""))
        order = "key order kept" if ordered else "records OUT of key order"
        return f"{row['median']:,.0f} msg/s, {order}", ordered and row["median"] >= least

    return read


def _p99(most_ms: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    def read(row: dict[str, Any]) -> tuple[str, bool]:
        kept = row.get("kept_up") == "yes"
        p99 = row.get("p99_ms") or float("inf")
        return f"{'kept up' if kept else 'did NOT keep up'}, p99 {p99:,.1f} ms", kept and p99 <= most_ms

    return read


def _kept_up(row: dict[str, Any]) -> tuple[str, bool]:
    kept = row.get("kept_up") == "yes"
    return f"{row['handled_per_s']:,.0f} of {row['rate']:,} msg/s handled", kept


TARGETS = (
    _Target(
        "builder/tier at defaults, one message at a time",
        ">= 0.8x plain single",
        "enhanced",
        "single",
        "enhanced tier, default",
        _ratio(0.8),
        "CPU: one Redis round trip per record on the handler's path (the honest window at "
        "concurrency=1: ~1/3 of a record's CPU, the loop idles and wakes per record), "
        "FastStream's per-message chain, the tier",
    ),
    _Target(
        "enhanced stack on a batch subscriber",
        ">= 0.8x plain batch",
        "enhanced",
        "batch",
        "enhanced tier, default",
        _ratio(0.8),
        "Redis script time (~22-28 µs/event here) and the tier's CPU (~30 µs/event) overlap "
        "only in part: the next batch's claim waits behind this one's done markers in Redis",
    ),
    _Target(
        "consume -> produce, the default linger 5 ms",
        ">= 0.5x plain",
        "enhanced",
        "consume->produce, linger 5",
        "enhanced tier + dedup",
        _ratio(0.5),
        "",
    ),
    _Target(
        "consume -> produce, linger 0 ms",
        ">= 0.5x plain",
        "enhanced",
        "consume->produce, linger 0",
        "enhanced tier + dedup",
        _ratio(0.5),
        "each child acknowledged (acks=all), then its done marker written, before the next "
        "handler starts (concurrency=1)",
    ),
    _Target(
        "concurrency=64, handler awaiting 5 ms",
        ">= 3,000 msg/s, key order kept",
        "enhanced",
        "handler awaits",
        "builder, concurrency=64",
        _ordered_rate(3_000),
        "CPU, ~250-450 µs/msg (machine-dependent)",
    ),
    _Target(
        "builder at 1k msg/s, defaults (concurrency=1)",
        "keeps up, p99 <= 10 ms",
        "latency",
        "1000",
        "builder, defaults",
        _p99(10.0),
        "CPU: one record at a time with a Redis round trip each; with little headroom the "
        "records queue at the gate (the 'stalls')",
    ),
    _Target(
        "builder at 1k msg/s, concurrency=16",
        "keeps up, p99 <= 10 ms",
        "latency",
        "1000",
        "builder, concurrency=16",
        _p99(10.0),
        "CPU, ~250-450 µs/msg (machine-dependent)",
    ),
    _Target(
        "builder at 5k msg/s with concurrency (16)",
        "keeps up",
        "latency",
        "5000",
        "builder, concurrency=16",
        _kept_up,
        "CPU, ~250-450 µs/msg (machine-dependent)",
    ),
    _Target(
        "direct consumer, commit(record) as documented",
        ">= 0.8x raw getone",
        "direct",
        "consume + commit(record)",
        "RedpandaConsumer, commit(record) (documented)",
        _ratio(0.8),
        "",
    ),
)

COLUMNS = (
    Column("figure", "figure"),
    Column("wanted", "target"),
    Column("measured", "measured in this run"),
    Column("verdict", "verdict"),
    Column("bound", "what bounds a missed one"),
)


def _rows(sections: dict[str, list[Table]]) -> Rows:
    return {name: [row for table in tables for row in table.rows] for name, tables in sections.items()}


def _matching(rows: Rows, target: _Target) -> Iterator[dict[str, Any]]:
    for row in rows.get(target.section, []):
        case = str(row.get("case", row.get("rate", "")))
        if case.startswith(target.case) and str(row.get("variant", "")).startswith(target.variant):
            yield row


def scorecard(sections: dict[str, list[Table]]) -> Table:
    """One line per target: what this run measured and whether it is met."""
    rows = _rows(sections)
    table = Table("issue 12 targets, this run", COLUMNS)
    for target in TARGETS:
        found = next(_matching(rows, target), None)
        if found is None:
            measured, verdict, bound = f"(section `{target.section}` not in this run)", "-", ""
        else:
            measured, met = target.measured(found)
            verdict, bound = ("met", "") if met else ("MISSED", target.bound)
        table.rows.append(
            {
                "figure": target.figure,
                "wanted": target.wanted,
                "measured": measured,
                "verdict": verdict,
                "bound": bound,
            }
        )
    table.notes.append('the profiles behind each bound: bench/README.md, "Issue 12" parts 1 to 4')
    return table
