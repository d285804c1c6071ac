"""Enhanced tier: messages/s through a FastStream subscriber with the full stack vs none.

One pre-filled topic of envelope-encoded events; every run reads all of it with a fresh consumer
group (and a fresh dedup namespace), so every variant reads identical bytes from the same broker.
Runs are interleaved (variant A, B, C, A, B, C, ...) and the median of the repetitions is kept.

Variants, each in single-message and batch mode:
- `plain`: no middlewares, FastStream's Kafka default ACK_FIRST (aiokafka auto-commit every 5 s;
  neither at-least-once nor at-most-once); the handler takes the body only. The baseline the
  targets are stated against.
- `plain+commit`: no middlewares, MANUAL with an explicit offset commit per message (per batch
  in batch mode): the cost of at-least-once alone, without any middleware. Its handler takes
  `KafkaMessage` to commit, which FastStream resolves in a worker thread (bench/README.md).
- `enhanced`: the enhanced tier as a decorator user wires it, `EnhancedTier(...)`,
  `tier.broker(...)` and `tier.install(app)` (metrics, error routing with its commits, envelope
  validation, Redis dedup; MANUAL, the revoke listener on the subscriber; no tracer provider
  configured, as by default), one awaited commit per message (batch): `commit_every=1`.
- `enhanced+coalesced`: the same tier with its default, `commit_every="auto"` (100 outcomes or
  0.5 s per background commit).

Single-message runs read `SINGLE_MESSAGES` records, except the two variants bound by a commit
per message (~120 msg/s on Kafka 4), which read `COMMIT_EACH_MESSAGES` to keep the bench short.

Every variant runs inside a `FastStream` app (`app.start()` / `app.stop()`); the app's hooks
(the tier's startup checks, drain and close) run outside the measured span.

Throughput is measured from the moment the first message reaches the handler to the moment the
last one is done, so the consumer-group join is not counted. Targets (issue 12): enhanced >= 0.8x
plain in single-message mode and in batch mode.

Where the time goes: `python -m bench.enhanced` runs the enhanced stack once per mode under
pyinstrument with the awaited time of consumer commits and Redis commands measured. In
single-message mode an explicit commit per message costs ~7-8 ms on Kafka 4.x, because the
broker's group coordinator lingers `group.coordinator.append.linger.ms` (default 5 ms) before
appending offsets; that alone caps at-least-once single-message consumption near 120 msg/s per
consumer, whatever the middlewares do (`plain, MANUAL + commit` shows it without them). The
tier's default commits in the background by low-water mark (`enhanced+coalesced`), off the
message's path; bench/README.md ("Issue 12") says what is left. `python -m bench.enhanced
--coalesced` profiles that configuration; `--bare N` (with `--plain` for the baseline) runs it N
times without a profiler inside, for py-spy.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis.asyncio as aioredis
from aiokafka.structs import TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage

from alpha_streaming import ConsumerSettings, RedpandaSettings, make_broker
from bench._common import Fill, Row, fills, interleaved, prefill_envelopes, topics
from middlewares import EnhancedTier

SINGLE, BATCH = "single", "batch"
PLAIN, PLAIN_COMMIT, ENHANCED, COALESCED = "plain", "plain+commit", "enhanced", "enhanced+coalesced"
VARIANTS = (PLAIN, PLAIN_COMMIT, ENHANCED, COALESCED)
STACKED = (ENHANCED, COALESCED)
COMMIT_EVERY: dict[str, int | Literal["auto"]] = {ENHANCED: 1, COALESCED: "auto"}
TARGETS = {SINGLE: 0.8, BATCH: 0.8}  # issue 12
PARTITIONS = 3
# Enough for a run to last ~1 s at the baseline's rate (first-to-last edge effects stay small).
SINGLE_MESSAGES = 10_000
# A commit per message goes at ~120 msg/s on a Kafka 4 broker: fewer messages for those two.
COMMIT_EACH_MESSAGES = 1_000
COMMIT_EACH = (PLAIN_COMMIT, ENHANCED)
# Plain batch reads ~60k msg/s: at 20,000 a run lasted 0.3 s and one fetch stall halved it (two of
# five baseline runs at ~20k in one report, which doubled the tier's ratio); 1 s keeps it small.
BATCH_MESSAGES = 60_000
BATCH_MAX_RECORDS = 500
RUN_TIMEOUT_S = 120.0


async def prefill(bootstrap: str, topic: str, count: int) -> None:
    await prefill_envelopes(bootstrap, topic, fills(count))


class _Clock:
    """Counts handled messages; first arrival to last completion is the measured interval."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = 0
        self.first: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()

    def start(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def finish(self, count: int) -> None:
        self.seen += count
        if self.seen >= self.expected:
            self.last = time.perf_counter()
            self.done.set()

    @property
    def rate(self) -> float:
        assert self.first is not None
        return self.seen / (self.last - self.first)


async def _commit(msg: KafkaMessage) -> None:
    raw = msg.raw_message
    records = raw if isinstance(raw, list | tuple) else (raw,)
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    await msg.consumer.commit(offsets)


def _subscribe(broker: KafkaBroker, topic: str, variant: str, mode: str, clock: _Clock) -> None:
    options: dict[str, Any] = {"group_id": f"bench-{uuid.uuid4().hex[:10]}", "auto_offset_reset": "earliest"}
    if variant not in STACKED:  # the tier's broker makes MANUAL the default, and install() checks it
        options["ack_policy"] = AckPolicy.ACK_FIRST if variant == PLAIN else AckPolicy.MANUAL
    if mode == BATCH:
        options.update(batch=True, max_records=BATCH_MAX_RECORDS)
    subscriber = broker.subscriber(topic, **options)

    if variant in STACKED and mode == SINGLE:

        @subscriber
        async def enhanced_one(fill: Fill) -> None:
            clock.start()
            clock.finish(1)

    elif variant in STACKED:

        @subscriber
        async def enhanced_many(fills: list[Fill]) -> None:
            clock.start()
            clock.finish(len(fills))

    elif mode == SINGLE and variant == PLAIN:

        @subscriber
        async def plain_one(body: dict[str, Any]) -> None:
            clock.start()
            clock.finish(1)

    elif mode == SINGLE:

        @subscriber
        async def plain_one_commit(body: dict[str, Any], msg: KafkaMessage) -> None:
            clock.start()
            await _commit(msg)
            clock.finish(1)

    else:

        @subscriber
        async def plain_many(bodies: list[dict[str, Any]], msg: KafkaMessage) -> None:
            clock.start()
            if variant == PLAIN_COMMIT:
                await _commit(msg)
            clock.finish(len(bodies))


async def measure(
    variant: str, mode: str, topic: str, count: int, bootstrap: str, redis: Any, profiler: Any = None
) -> float:
    """Messages/s of one run of `variant` in `mode` over the whole pre-filled topic."""
    config = RedpandaSettings(bootstrap_servers=bootstrap)
    # FastStream logs every message; without a logger neither side pays for that.
    if variant in STACKED:
        tier = EnhancedTier(
            "bench",
            redis=redis,
            dedup_namespace=f"bench-{uuid.uuid4().hex[:8]}",  # nothing seen yet
            consumer=ConsumerSettings(commit_every=COMMIT_EVERY[variant]),
        )
        broker = tier.broker(config, logger=None)
        app = tier.install(FastStream(broker, logger=None))
    else:
        broker = make_broker(config, logger=None)
        app = FastStream(broker, logger=None)
    clock = _Clock(count)
    _subscribe(broker, topic, variant, mode, clock)
    await app.start()
    try:
        if profiler is not None:
            profiler.start()
        await asyncio.wait_for(clock.done.wait(), RUN_TIMEOUT_S)
        if profiler is not None:
            profiler.stop()
    finally:
        await app.stop()  # the tier: drain, stop the broker, close (metrics included)
    return clock.rate


VARIANT_NAMES = {
    PLAIN: "plain, ACK_FIRST (auto-commit)",
    PLAIN_COMMIT: "plain, MANUAL + commit",
    ENHANCED: "enhanced tier, commit each",
    COALESCED: "enhanced tier, default (background commits)",
}


def count_for(variant: str, mode: str, count: int) -> int:
    return min(count, COMMIT_EACH_MESSAGES) if mode == SINGLE and variant in COMMIT_EACH else count


async def run(args: argparse.Namespace) -> list[Row]:
    """The runner's entry point (`python -m bench enhanced`)."""
    counts = {SINGLE: min(args.messages, SINGLE_MESSAGES), BATCH: min(args.messages, BATCH_MESSAGES)}
    redis = aioredis.Redis.from_url(args.redis_url)
    rows: list[Row] = []
    try:
        async with topics(args.bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("enhanced")
            await prefill(args.bootstrap, topic, max(counts.values()))
            for mode in (SINGLE, BATCH):
                case = f"{mode} ({counts[mode]:,} msgs)"
                mode_rows = [Row(case, VARIANT_NAMES[v], baseline=v == PLAIN) for v in VARIANTS]
                for row, variant in zip(mode_rows, VARIANTS, strict=True):
                    if variant in STACKED:
                        row.note = f"target >= {TARGETS[mode]}x plain"
                    if mode == SINGLE and variant in COMMIT_EACH:
                        row.note = f"{count_for(variant, mode, counts[mode]):,} msgs; {row.note}".rstrip("; ")

                def measuring(variant: str, mode: str = mode) -> Callable[[], Awaitable[float]]:
                    count = count_for(variant, mode, counts[mode])
                    return lambda: measure(variant, mode, topic, count, args.bootstrap, redis)

                await interleaved(
                    args.runs, [(row, measuring(v)) for row, v in zip(mode_rows, VARIANTS, strict=True)]
                )
                rows += mode_rows
    finally:
        await redis.aclose()
    for row in rows:
        if "target" in row.note:
            base = next(r for r in rows if r.case == row.case and r.baseline).median
            ratio = row.median / base
            target = TARGETS[SINGLE if "single" in row.case else BATCH]
            row.note += f": {'met' if ratio >= target else f'MISSED by {target - ratio:.2f}x'}"
    return rows


if __name__ == "__main__":
    import os

    cli = argparse.ArgumentParser(description="Profile the enhanced stack (pyinstrument).")
    cli.add_argument("--coalesced", action="store_true", help="the default commits instead of commit_every=1")
    cli.add_argument("--plain", action="store_true", help="the baseline (with --bare)")
    cli.add_argument("--bare", type=int, metavar="RUNS", help="no pyinstrument: RUNS single-message runs")
    options = cli.parse_args()
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    chosen = PLAIN if options.plain else COALESCED if options.coalesced else ENHANCED
    from bench._enhanced_profile import bare, profile

    asyncio.run(bare(servers, url, chosen, options.bare) if options.bare else profile(servers, url, chosen))
