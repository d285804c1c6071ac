"""Dedup cost per message: the enhanced stack with Redis dedup vs the same stack without it.

1. Stack: the enhanced tier as a user wires it (`EnhancedTier`, `tier.broker()`,
   `tier.install(app)`; metrics + spans exported nowhere, error routing, envelope) with and
   without Redis dedup (`redis=` given or not), a batch subscriber (500 records per call, one
   commit per batch) reading one pre-filled topic with a fresh group (and dedup namespace) per
   run, runs interleaved; the app's hooks run outside the measured span. Batch mode, because in
   single-message mode both sides pay a ~8 ms offset commit per message (bench/enhanced.py
   explains why) and the dedup cost disappears in that noise.
2. Redis alone, through the middleware's `DedupStore` (internal: there is no public way to run
   it without a consumer around it): claim + done for one message at a time (what a sequential
   single-message subscriber pays), for 64 messages in flight at once (`concurrency=64`: their
   requests of one event-loop turn share a script call), and 100 events per request (a batch).
3. Memory: Redis `used_memory` added per remembered event over `MEMORY_EVENTS` events, and what
   24 h at 1k msg/s costs.
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
from bench._common import Column, Row, Stopwatch, Table, interleaved, prefill_envelopes, rate_table, topics
from middlewares import DeduplicationMiddleware, EnhancedTier

PARTITIONS = 3
BATCH_MAX_RECORDS = 500
SCRIPT_BATCH = 100
IN_FLIGHT = 64
MEMORY_EVENTS = 200_000
DEDUP = DedupSettings(window_s=600)  # bench markers expire soon instead of after the default hour
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


def _store(redis: aioredis.Redis) -> tuple[DeduplicationMiddleware, str]:
    dedup = DeduplicationMiddleware(redis, namespace=f"bench-{uuid.uuid4().hex[:8]}", settings=DEDUP)
    return dedup, dedup.key_prefix("bench")


async def claim_and_mark(redis: aioredis.Redis, events: int, per_request: int, in_flight: int) -> float:
    """Events/s through claim + done: `in_flight` messages at once, `per_request` events each."""
    dedup, prefix = _store(redis)
    store = dedup.store

    async def message(ids: list[str], owner: str) -> None:
        await store.claim(prefix, ids, owner)
        await store.done(prefix, ids, owner)

    await message(["warm-up"], "o")  # loads the script
    clock = Stopwatch()
    group = per_request * in_flight
    for start in range(0, events, group):
        ids = [f"{start + n}" for n in range(min(group, events - start))]
        chunks = [ids[i : i + per_request] for i in range(0, len(ids), per_request)]
        await asyncio.gather(*(message(chunk, f"o{n}") for n, chunk in enumerate(chunks)))
    rate = clock.rate(events)
    calls_per_message = (store.calls - 2) / (events / per_request)
    CALLS[(per_request, in_flight)] = calls_per_message
    return rate


CALLS: dict[tuple[int, int], float] = {}
"""Script calls per message of each Redis-alone variant (claim + done: 2 without coalescing)."""


async def bytes_per_event(redis: aioredis.Redis, events: int) -> Table:
    """Redis memory per remembered event (compact done markers), and 24 h at 1k msg/s."""
    dedup, prefix = _store(redis)
    store = dedup.store
    await store.claim(prefix, ["warm-up"], "o")
    await store.done(prefix, ["warm-up"], "o")
    before = (await redis.info("memory"))["used_memory"]
    for start in range(0, events, 1_000):
        ids = [str(uuid.uuid4()) for _ in range(min(1_000, events - start))]
        await store.claim(prefix, ids, "o")
        await store.done(prefix, ids, "o")
    per_event = ((await redis.info("memory"))["used_memory"] - before) / events
    listpack = (await redis.config_get("hash-max-listpack-entries")).get("hash-max-listpack-entries")
    version = (await redis.info("server"))["redis_version"]
    day = 86_400 * 1_000  # events in 24 h at 1k msg/s
    # A marker lives from the window to the window plus a bucket (half of it): 1.25x on average.
    window_h = DedupSettings().window_s / 3600
    table = Table(
        "Redis memory of dedup done markers",
        (
            Column("layout", "layout"),
            Column("bytes", "bytes/event", "{:,.1f}"),
            Column("day", "24 h at 1k msg/s (GB)", "{:,.2f}"),
            Column("window", f"default {window_h:g} h window at 1k msg/s (MB)", "{:,.0f}"),
        ),
    )
    table.rows.append(
        {
            "layout": "16-byte ids in bucketed listpack hashes",
            "bytes": per_event,
            "day": per_event * day / 1e9,
            "window": per_event * 1_000 * DedupSettings().window_s * 1.25 / 1e6,
        }
    )
    table.notes.append(
        f"used_memory delta / {events:,} events; Redis {version}, hash-max-listpack-entries {listpack}; "
        "the per-event string keys before this layout measured ~200 bytes/event (issue 18)"
    )
    # What the run left behind goes now rather than after the window.
    keys = [key async for key in redis.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*")]
    for start in range(0, len(keys), 1_000):
        await redis.delete(*keys[start : start + 1_000])
    return table


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

        script_case = f"claim + done ({events:,} events)"
        one = Row(script_case, "1 message at a time", baseline=True)
        together = Row(script_case, f"{IN_FLIGHT} messages in flight (coalesced per turn)")
        many = Row(script_case, f"{SCRIPT_BATCH} events per message (a batch)")

        def scripting(per_request: int, in_flight: int) -> Callable[[], Awaitable[float]]:
            return lambda: claim_and_mark(redis, events, per_request, in_flight)

        await interleaved(
            args.runs,
            [(one, scripting(1, 1)), (together, scripting(1, IN_FLIGHT)), (many, scripting(SCRIPT_BATCH, 1))],
        )
        for row, variant in ((one, (1, 1)), (together, (1, IN_FLIGHT)), (many, (SCRIPT_BATCH, 1))):
            row.note = f"{CALLS[variant]:.3f} script calls per message"
        memory = await bytes_per_event(redis, 20_000 if getattr(args, "quick", False) else MEMORY_EVENTS)
    finally:
        await redis.aclose()
    stack_table = rate_table("enhanced stack with vs without dedup", [without, with_dedup])
    redis_table = rate_table("Redis cost of dedup alone (events/s, µs per event)", [one, together, many])
    for table in (stack_table, redis_table):
        table.notes += added_cost(table)
    return [stack_table, redis_table, memory]
