"""Consume -> produce: one child event published per input, enhanced stack vs plain FastStream.

The handler receives one event and returns one child event, which is published to an output
topic through `@broker.publisher(out)`. In each case both contenders read the same pre-filled
topic of envelope-encoded events (same bytes, 3 partitions) with a fresh consumer group, and
write to a fresh output topic of their own (3 partitions) per run. Runs are interleaved, medians
kept.

- `plain`: a `KafkaBroker` subscriber, no middlewares, FastStream's Kafka default ACK_FIRST
  (aiokafka auto-commit), logger off; it reads the envelope as a `dict` and returns a `dict`.
- `enhanced`: the tier as a decorator user wires it (examples/decorator_app.py):
  `tier = EnhancedTier(service, redis=..., dedup=...)` with Redis dedup, `broker = tier.broker(...)`
  (subscribers `AckPolicy.MANUAL` by default) and `tier.install(app)` (the revoke listener on the
  subscriber, pending commits drained before the broker stops, the tier closed after); the handler
  takes the payload model and returns a pydantic model, which the stack publishes as a child
  envelope.

Both contenders run inside a `FastStream` app (`app.start()` / `app.stop()`), as a user's would;
the app's hooks run before the first input and after the last child, outside the measured span.

The finish line is the same for both: an input counts as processed once its child is on the
output topic, i.e. when the sum of the output topic's end offsets (ListOffsets from a group-less
consumer, polled every `POLL_S`) reaches the number of inputs. The clock starts when the first
input reaches the handler (the group join is not counted), as in bench/enhanced.py. Only the
public wiring is used, so it measures the stack whether the stack or FastStream publishes the
return value, and whatever the order of publish, done marker and commit. More records on the
output topic than inputs (a redelivery published twice) are reported in the row's note.

Two cases, differing only in the producer's `linger_ms` (both contenders build their broker with
`make_broker(RedpandaSettings(...))`, idempotent, acks=all):
- `linger_ms=5`, the project's default: a subscriber handles one message at a time and awaits
  its child's produce, so every input waits out the linger (~5 ms) plus the acks=all round trip.
  That bounds both contenders near 140 msg/s and hides most of what the stack costs.
- `linger_ms=0`: the same without the linger, where the per-message cost of each side shows.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming import DedupSettings, RedpandaSettings, make_broker
from bench._common import Fill, Row, fills, interleaved, prefill_envelopes, topics
from middlewares import EnhancedTier

PLAIN, ENHANCED, EXACTLY_ONCE = "plain", "enhanced", "exactly_once"
VARIANTS = (PLAIN, ENHANCED, EXACTLY_ONCE)
VARIANT_NAMES = {
    PLAIN: "plain, ACK_FIRST, returns a dict",
    ENHANCED: "enhanced tier + dedup, MANUAL, returns a model",
    EXACTLY_ONCE: "enhanced tier, exactly_once (Kafka transactions, no Redis), returns a model",
}
PARTITIONS = 3
DEFAULT_LINGER_MS: int = RedpandaSettings.model_fields["linger_ms"].default
# (linger_ms, inputs per run). With the default linger a run goes at ~140 msg/s, so it gets fewer
# inputs than the consume-only rows; without it, ~500 (enhanced) to ~1,600 msg/s (plain).
CASES = ((DEFAULT_LINGER_MS, 1_000), (0, 2_000))
DEDUP = DedupSettings(done_ttl_s=600)  # bench keys expire soon instead of after a week
POLL_S = 0.01
RUN_TIMEOUT_S = 120.0


class Position(BaseModel):
    """The child event the handler returns for each fill."""

    order_id: str
    strategy: str
    symbol: str
    quantity: int


class OutputCounter:
    """Records on a topic, summed from its partitions' end offsets (no group, nothing fetched)."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def count(self, topic: str) -> int:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum((await self._consumer.end_offsets(partitions)).values())

    async def reached(self, topic: str, expected: int) -> float:
        """`perf_counter()` when the topic first holds `expected` records (polled every POLL_S)."""
        while True:
            if await self.count(topic) >= expected:
                return time.perf_counter()
            await asyncio.sleep(POLL_S)


class _First:
    """When the first input reached the handler."""

    def __init__(self) -> None:
        self.at: float | None = None

    def mark(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()


def _plain(broker: KafkaBroker, source: str, out: str, first: _First) -> None:
    @broker.subscriber(
        source,
        group_id=f"bench-{uuid.uuid4().hex[:10]}",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK_FIRST,
    )
    @broker.publisher(out)
    async def plain_child(body: dict[str, Any]) -> dict[str, Any]:
        first.mark()
        fill = body["data"]
        return {
            "order_id": fill["order_id"],
            "strategy": fill["strategy"],
            "symbol": fill["symbol"],
            "quantity": fill["qty"],
        }


def _enhanced(broker: KafkaBroker, source: str, out: str, first: _First, group: str | None = None) -> None:
    @broker.subscriber(
        source,
        group_id=group or f"bench-{uuid.uuid4().hex[:10]}",
        auto_offset_reset="earliest",
    )
    @broker.publisher(out)
    async def enhanced_child(fill: Fill) -> Position:
        first.mark()
        return Position(order_id=fill.order_id, strategy=fill.strategy, symbol=fill.symbol, quantity=fill.qty)


async def measure(
    variant: str,
    source: str,
    out: str,
    count: int,
    *,
    bootstrap: str,
    linger_ms: int,
    redis: aioredis.Redis,
    counter: OutputCounter,
) -> tuple[float, int]:
    """(inputs/s, children beyond `count`) of one run: first input in the handler -> `count` on `out`."""
    settings = RedpandaSettings(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    await counter.count(out)  # the counter knows the fresh topic's leaders before the clock starts
    first = _First()
    # FastStream logs every message; without a logger neither side pays for that.
    if variant == EXACTLY_ONCE:
        # Outputs are visible only once committed, atomically with the group's offsets: the run
        # is done when the group has committed every input (end offsets count aborted data too).
        group = f"bench-{uuid.uuid4().hex[:10]}"
        tier = EnhancedTier("bench-cp", processing_guarantee="exactly_once", instance_id=group)
        broker = tier.broker(settings, logger=None)
        app = tier.install(FastStream(broker, logger=None))
        _enhanced(broker, source, out, first, group)
        await app.start()
        try:
            last = await asyncio.wait_for(_committed(bootstrap, group, count), RUN_TIMEOUT_S)
        finally:
            await app.stop()
        assert first.at is not None
        return count / (last - first.at), 0
    if variant == ENHANCED:
        tier = EnhancedTier(
            "bench-cp",
            redis=redis,
            dedup=DEDUP,
            dedup_namespace=f"bench-cp-{uuid.uuid4().hex[:8]}",  # nothing seen yet
        )
        broker = tier.broker(settings, logger=None)
        app = tier.install(FastStream(broker, logger=None))
        _enhanced(broker, source, out, first)
    else:
        broker = make_broker(settings, logger=None)
        app = FastStream(broker, logger=None)
        _plain(broker, source, out, first)
    await app.start()
    try:
        last = await asyncio.wait_for(counter.reached(out, count), RUN_TIMEOUT_S)
    finally:
        await app.stop()  # enhanced: drain, stop the broker, close the tier (metrics included)
    extra = await counter.count(out) - count
    assert first.at is not None
    return count / (last - first.at), extra


async def _committed(bootstrap: str, group: str, count: int) -> float:
    """`perf_counter()` when `group` has committed `count` inputs (polled every 5 POLL_S)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            offsets = await admin.list_consumer_group_offsets(group)
            if sum(max(meta.offset, 0) for meta in offsets.values()) >= count:
                return time.perf_counter()
            await asyncio.sleep(5 * POLL_S)
    finally:
        await admin.close()


async def run(args: argparse.Namespace) -> list[Row]:
    """The runner's entry point (`python -m bench consume_produce`)."""
    redis = aioredis.Redis.from_url(args.redis_url)
    counter = OutputCounter(args.bootstrap)
    rows: list[Row] = []
    try:
        async with topics(args.bootstrap, partitions=PARTITIONS) as new_topic:
            await counter.start()
            try:
                for linger_ms, messages in CASES:
                    count = min(args.messages, messages)
                    rows += await _case(args, linger_ms, count, new_topic, redis, counter)
            finally:
                await counter.stop()
    finally:
        await redis.aclose()
    return rows


async def _case(
    args: argparse.Namespace,
    linger_ms: int,
    count: int,
    new_topic: Callable[[str], Awaitable[str]],
    redis: aioredis.Redis,
    counter: OutputCounter,
) -> list[Row]:
    """Both contenders, interleaved, on one pre-filled input topic of `count` envelopes."""
    case = f"consume->produce, linger {linger_ms} ms ({count:,} msgs)"
    rows = {v: Row(case, VARIANT_NAMES[v], baseline=v == PLAIN) for v in VARIANTS}
    extra = dict.fromkeys(VARIANTS, 0)
    source = await new_topic("cp-in")
    await prefill_envelopes(args.bootstrap, source, fills(count))

    def measuring(variant: str) -> Callable[[], Awaitable[float]]:
        async def one() -> float:
            out = await new_topic("cp-out")
            rate, beyond = await measure(
                variant,
                source,
                out,
                count,
                bootstrap=args.bootstrap,
                linger_ms=linger_ms,
                redis=redis,
                counter=counter,
            )
            extra[variant] += beyond
            return rate

        return one

    await interleaved(args.runs, [(rows[v], measuring(v)) for v in VARIANTS])
    for variant, row in rows.items():
        row.note = "done = children on the output topic (end offsets)"
        if variant == EXACTLY_ONCE:
            row.note = "done = every input's offset committed (atomically with its child)"
        if linger_ms == DEFAULT_LINGER_MS:
            row.note += "; the project's default linger_ms"
        if extra[variant]:
            row.note += f"; {extra[variant]} more children than inputs over {args.runs} runs"
    return list(rows.values())
