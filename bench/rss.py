"""Memory of a service with 4 subscribers: built with `StreamServiceBuilder` vs plain FastStream.

Each variant runs in its own OS process (`bench/_rss_service.py`) that consumes 4
pre-filled topics (one consumer group each) and says so on stdout; the parent then reads the
child's RSS and USS with psutil and stops it. Runs are interleaved.

- `plain`: a `FastStream` app, 4 `broker.subscriber(...)` handlers taking a dict, ACK_FIRST.
- `builder`: `StreamServiceBuilder` with Redis dedup, metrics (OpenTelemetry SDK), error routing
  and envelopes, 4 `add_consumer_handler(...)` calls; commits coalesced (`commit_every=100`) so
  the consumption takes seconds, not minutes (commit coalescing does not change the memory).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import psutil
from pydantic import BaseModel

from bench._common import Column, Table, prefill_envelopes, topics

SUBSCRIBERS = 4
PLAIN, BUILDER = "plain", "builder"
VARIANT_NAMES = {PLAIN: "plain FastStream app", BUILDER: "StreamServiceBuilder service"}
CHILD_TIMEOUT_S = 180.0
MIB = 1024 * 1024


class Position(BaseModel):
    """The RSS benchmark's payload (the child declares the same model)."""

    account: str
    symbol: str
    qty: int


async def measure(
    variant: str, args: argparse.Namespace, names: list[str], per_topic: int
) -> dict[str, float]:
    """Start one child, wait until it consumed everything, return its RSS and USS in MiB."""
    child = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "bench._rss_service",
            variant,
            args.bootstrap,
            args.redis_url,
            str(per_topic),
            *names,
        ),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), CHILD_TIMEOUT_S)
        if not line.startswith(b"consumed"):
            raise RuntimeError(f"bench._rss_service {variant} ended before consuming everything")
        memory = psutil.Process(child.pid).memory_full_info()
        return {"rss": memory.rss / MIB, "uss": memory.uss / MIB}
    finally:
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 30)
        except TimeoutError:
            child.kill()
            await child.wait()


COLUMNS = (
    Column("variant", "variant"),
    Column("rss", "median RSS MiB", "{:,.1f}"),
    Column("uss", "median USS MiB", "{:,.1f}"),
    Column("ratio", "RSS ratio", "{:.3f}"),
    Column("extra", "extra RSS MiB", "{:+,.1f}"),
    Column("runs", "runs (RSS MiB)", "{:,.1f}"),
)


async def run(args: argparse.Namespace) -> list[Table]:
    """The runner's entry point (`python -m bench rss`)."""
    quick = getattr(args, "quick", False)
    per_topic, rounds = (250, 1) if quick else (2_500, 3)
    samples: dict[str, list[dict[str, float]]] = {PLAIN: [], BUILDER: []}
    async with topics(args.bootstrap, partitions=3) as new_topic:
        names = [await new_topic(f"rss-{n}") for n in range(SUBSCRIBERS)]
        positions = [Position(account=f"a-{n % 7}", symbol="NIFTY", qty=n % 50 + 1) for n in range(per_topic)]
        for topic in names:
            await prefill_envelopes(args.bootstrap, topic, positions)
        for round_no in range(rounds):
            for variant in (PLAIN, BUILDER) if round_no % 2 == 0 else (BUILDER, PLAIN):
                samples[variant].append(await measure(variant, args, names, per_topic))
    total = SUBSCRIBERS * per_topic
    table = Table(
        f"RSS of a service with {SUBSCRIBERS} subscribers after consuming {total:,} messages", COLUMNS
    )
    base = statistics.median(s["rss"] for s in samples[PLAIN])
    for variant in (PLAIN, BUILDER):
        rss = statistics.median(s["rss"] for s in samples[variant])
        table.rows.append(
            {
                "variant": VARIANT_NAMES[variant],
                "baseline": variant == PLAIN,
                "rss": rss,
                "uss": statistics.median(s["uss"] for s in samples[variant]),
                "ratio": rss / base,
                "extra": rss - base,
                "runs": [s["rss"] for s in samples[variant]],
            }
        )
    table.notes.append(
        f"{rounds} run(s) per variant, interleaved; each a fresh process and fresh consumer groups"
    )
    return [table]
