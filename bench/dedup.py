"""Dedup cost per message: the enhanced stack with Redis dedup vs the same stack without it.

1. Stack: the enhanced tier as a user wires it (`EnhancedTier`, `tier.broker()`,
   `tier.install(app)`; metrics + spans exported nowhere, error routing, envelope) with and
   without Redis dedup (`redis=` given or not), a batch subscriber (500 records per call, one
   commit per batch) reading one pre-filled topic with a fresh group (and dedup namespace) per
   run, runs interleaved; the app's hooks run outside the measured span. Batch mode, because in
   single-message mode both sides pay a ~8 ms offset commit per message (bench/enhanced.py
   explains why) and the dedup cost disappears in that noise.
2. Redis alone: the Lua claim + mark-done of `middlewares/_lease_scripts.py`, one event per call
   (what single-message mode pays) vs 100 events per call (what a batch pays), per event. This
   part calls the middleware's own scripts (`middlewares._lease_scripts`, internal): there is
   no public way to run them without a consumer around them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from faststream import FastStream
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel

from alpha_streaming import ConsumerSettings, DedupSettings, RedpandaSettings
from bench._common import Row, Stopwatch, Table, interleaved, prefill_envelopes, rate_table, topics
from middlewares import EnhancedTier
from middlewares._lease_scripts import register_lease_scripts  # internal: the Redis-alone rows

PARTITIONS = 3
BATCH_MAX_RECORDS = 500
SCRIPT_BATCH = 100
DEDUP = DedupSettings(done_ttl_s=600)  # bench keys expire soon instead of after a week
RUN_TIMEOUT_S = 120.0


class Order(BaseModel):
    """The dedup benchmark's payload."""

    order_id: str
    symbol: str
    qty: int


async def consume_all(bootstrap: str, topic: str, count: int, redis: aioredis.Redis | None) -> float:
    """Messages/s of one batch subscriber with the enhanced tier (dedup when `redis` is given)."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    tier = EnhancedTier(
        "bench-dedup",
        redis=redis,
        dedup=DEDUP,
        dedup_namespace=namespace,
        tracer_provider=TracerProvider(),
        # Both variants commit each batch: dedup is the only difference.
        consumer=ConsumerSettings(commit_every=1),
    )
    broker = tier.broker(RedpandaSettings(bootstrap_servers=bootstrap), logger=None)
    app = tier.install(FastStream(broker, logger=None))
    done = asyncio.Event()
    seen = 0
    first: float | None = None

    @broker.subscriber(
        topic,
        group_id=namespace,
        auto_offset_reset="earliest",
        batch=True,
        max_records=BATCH_MAX_RECORDS,
    )
    async def orders(batch: list[Order]) -> None:
        nonlocal seen, first
        first = first if first is not None else time.perf_counter()
        seen += len(batch)
        if seen >= count:
            done.set()

    await app.start()
    try:
        await asyncio.wait_for(done.wait(), RUN_TIMEOUT_S)
        last = time.perf_counter()
    finally:
        await app.stop()  # the tier: drain, stop the broker, close (metrics included)
    assert first is not None
    return seen / (last - first)


async def claim_and_mark(redis: aioredis.Redis, events: int, per_call: int) -> float:
    """Events/s through the Lua claim + mark-done, `per_call` events per script call."""
    claim, mark_done, _release, _renew = register_lease_scripts(redis)
    prefix = f"alpha:dedup:bench-{uuid.uuid4().hex[:8]}:"
    owner, lease_ms, done_ms = uuid.uuid4().hex, 30_000, 60_000
    await claim(keys=[f"{prefix}warm-up"], args=[owner, lease_ms])  # loads the scripts
    clock = Stopwatch()
    for start in range(0, events, per_call):
        keys = [f"{prefix}{n}" for n in range(start, min(start + per_call, events))]
        await claim(keys=keys, args=[owner, lease_ms])
        await mark_done(keys=keys, args=[owner, done_ms])
    return clock.rate(events)


def added_cost(table: Table) -> list[str]:
    """One note per non-baseline row: µs per message it costs more (+) or less (-) than the baseline."""
    base = {row["case"]: row for row in table.rows if row["baseline"]}
    notes = []
    for row in table.rows:
        reference = base.get(row["case"])
        if row["baseline"] or reference is None or not row["us"] or not reference["us"]:
            continue
        notes.append(
            f"{row['variant']}: {row['us'] - reference['us']:+.1f} µs per message vs "
            f"{reference['variant']} (throughput ratio {row['ratio']:.3f})"
        )
    return notes


async def run(args: argparse.Namespace) -> list[Table]:
    """The runner's entry point (`python -m bench dedup`)."""
    count = min(args.messages, 20_000)
    events = 1_000 if getattr(args, "quick", False) else 10_000
    redis = aioredis.Redis.from_url(args.redis_url)
    try:
        async with topics(args.bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("dedup")
            orders = [Order(order_id=f"o-{n}", symbol="NIFTY", qty=n % 50 + 1) for n in range(count)]
            await prefill_envelopes(args.bootstrap, topic, orders)
            case = f"stack, batch ({count:,} msgs)"
            without = Row(case, "enhanced tier without dedup", baseline=True)
            with_dedup = Row(case, "enhanced tier with Redis dedup")

            def consuming(client: aioredis.Redis | None) -> Callable[[], Awaitable[float]]:
                return lambda: consume_all(args.bootstrap, topic, count, client)

            await interleaved(args.runs, [(without, consuming(None)), (with_dedup, consuming(redis))])

        script_case = f"Lua claim + mark done ({events:,} events)"
        one = Row(script_case, "1 event per call", baseline=True)
        many = Row(script_case, f"{SCRIPT_BATCH} events per call")

        def scripting(per_call: int) -> Callable[[], Awaitable[float]]:
            return lambda: claim_and_mark(redis, events, per_call)

        await interleaved(args.runs, [(one, scripting(1)), (many, scripting(SCRIPT_BATCH))])
    finally:
        await redis.aclose()
    stack_table = rate_table("enhanced stack with vs without dedup", [without, with_dedup])
    redis_table = rate_table("Redis cost of dedup alone (events/s, µs per event)", [one, many])
    for table in (stack_table, redis_table):
        table.notes += added_cost(table)
    return [stack_table, redis_table]
