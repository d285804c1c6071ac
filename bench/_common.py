"""Shared benchmark plumbing: topics, payloads, interleaved runs, medians and the table."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

__all__ = (
    "Row",
    "Stopwatch",
    "interleaved",
    "payloads",
    "print_table",
    "topics",
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


async def interleaved(runs: int, variants: Sequence[tuple[Row, Callable[[], Awaitable[float]]]]) -> None:
    """Run each variant once per round, alternating which goes first, and record its rate.

    Interleaving spreads broker warm-up, page cache and GC effects evenly over the variants.
    """
    for round_no in range(runs):
        order = variants if round_no % 2 == 0 else list(reversed(variants))
        for row, measure in order:
            row.rates.append(await measure())


def print_table(title: str, rows: Sequence[Row]) -> None:
    """Median msg/s per variant, its ratio to the case's baseline, and the median paired ratio.

    `ratio` divides the medians; `paired` is the median of per-round ratios (each variant against
    the baseline run next to it), which is steadier when the machine's load drifts during a run.
    """
    print(f"\n{title}")
    header = f"{'case':<22} {'variant':<28} {'median msg/s':>13} {'ratio':>7} {'paired':>7}  runs (msg/s)"
    print(header)
    print("-" * len(header))
    baselines = {row.case: row for row in rows if row.baseline}
    for row in rows:
        base = baselines.get(row.case)
        ratio = paired = "-"
        if base is not None and base.median:
            ratio = f"{row.median / base.median:.3f}"
            pairs = [mine / theirs for mine, theirs in zip(row.rates, base.rates, strict=False) if theirs]
            paired = f"{statistics.median(pairs):.3f}" if pairs else "-"
        runs = " ".join(f"{rate:,.0f}" for rate in row.rates)
        note = f"  {row.note}" if row.note else ""
        print(f"{row.case:<22} {row.variant:<28} {row.median:>13,.0f} {ratio:>7} {paired:>7}  {runs}{note}")
