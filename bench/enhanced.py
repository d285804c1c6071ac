"""Enhanced tier: messages/s through a FastStream subscriber with the full stack vs none.

One pre-filled topic of envelope-encoded events; every run reads all of it with a fresh consumer
group (and a fresh dedup namespace), so every variant reads identical bytes from the same broker.
Runs are interleaved (variant A, B, C, A, B, C, ...) and the median of the repetitions is kept.

Variants, each in single-message and batch mode:
- `plain`: no middlewares, FastStream's Kafka default ACK_FIRST (aiokafka auto-commit every 5 s;
  neither at-least-once nor at-most-once). The baseline the targets are stated against.
- `plain+commit`: no middlewares, MANUAL with an explicit offset commit per message (per batch
  in batch mode): the cost of at-least-once alone, without any middleware.
- `enhanced`: the enhanced tier as a decorator user wires it, `EnhancedTier(...)`,
  `tier.broker(...)` and `tier.install(app)` (metrics + spans on an SDK tracer provider that
  exports nowhere, error routing with its commits, envelope validation, Redis dedup; MANUAL, the
  revoke listener on the subscriber), one commit per message (batch):
  `ConsumerSettings(commit_every=1)`.
- `enhanced+coalesced`: the same tier with `commit_every=100` (the default with dedup, "auto").

Every variant runs inside a `FastStream` app (`app.start()` / `app.stop()`); the app's hooks
(the tier's startup checks, drain and close) run outside the measured span.

Throughput is measured from the moment the first message reaches the handler to the moment the
last one is done, so the consumer-group join is not counted. Targets (issue 4): enhanced >= 0.5x
plain in single-message mode, >= 0.7x in batch mode.

Where the time goes: `python -m bench.enhanced` runs the enhanced stack once per mode under
pyinstrument with the awaited time of consumer commits and Redis commands measured. In
single-message mode an explicit commit per message costs ~7-8 ms on Kafka 4.x, because the
broker's group coordinator lingers `group.coordinator.append.linger.ms` (default 5 ms) before
appending offsets; that alone caps at-least-once single-message consumption near 120 msg/s per
consumer, whatever the middlewares do (`plain, MANUAL + commit` shows it without them). Commit
coalescing (`enhanced+coalesced`; safe because the done marker is in Redis before the commit)
removes that cap; bench/README.md ("enhanced: what bounds single-message mode") says what is
left. `python -m bench.enhanced --coalesced` profiles that configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaMessage
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel

from alpha_streaming import ConsumerSettings, EventEnvelope, RedpandaSettings, make_broker
from bench._common import Row, interleaved, topics
from middlewares import EnhancedTier

SINGLE, BATCH = "single", "batch"
PLAIN, PLAIN_COMMIT, ENHANCED, COALESCED = "plain", "plain+commit", "enhanced", "enhanced+coalesced"
VARIANTS = (PLAIN, PLAIN_COMMIT, ENHANCED, COALESCED)
STACKED = (ENHANCED, COALESCED)
COMMIT_EVERY = {ENHANCED: 1, COALESCED: 100}
TARGETS = {SINGLE: 0.5, BATCH: 0.7}
PARTITIONS = 3
# Single-message runs with a commit per message go at ~130 msg/s on a Kafka 4 broker (see the
# module docstring), so they get fewer messages than batch runs to keep the whole bench short.
SINGLE_MESSAGES = 3_000
BATCH_MESSAGES = 20_000
BATCH_MAX_RECORDS = 500
RUN_TIMEOUT_S = 120.0


class Fill(BaseModel):
    """The benchmark's payload: a fill of the kind the trading pipeline carries."""

    order_id: str
    symbol: str
    qty: int
    price: str
    strategy: str


async def prefill(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for n in range(count):
            fill = Fill(order_id=f"o-{n}", symbol="NIFTY", qty=n % 50 + 1, price="101.25", strategy="s1")
            envelope = EventEnvelope.create(
                type="OrderFilled", data=fill, source="bench", key=f"s1:{n % 64}", broker="paper"
            )
            headers = [(k, v.encode()) for k, v in envelope.headers().items()]
            await producer.send(
                topic,
                envelope.to_bytes(),
                key=envelope.key.encode() if envelope.key else None,
                headers=headers,
            )
        await producer.flush()
    finally:
        await producer.stop()


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

    elif mode == SINGLE:

        @subscriber
        async def plain_one(body: dict[str, Any], msg: KafkaMessage) -> None:
            clock.start()
            if variant == PLAIN_COMMIT:
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
            tracer_provider=TracerProvider(),  # spans are recorded, exported nowhere
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
    COALESCED: "enhanced tier, commit_every=100",
}


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

                def measuring(variant: str, mode: str = mode) -> Callable[[], Awaitable[float]]:
                    return lambda: measure(variant, mode, topic, counts[mode], args.bootstrap, redis)

                await interleaved(
                    args.runs, [(row, measuring(v)) for row, v in zip(mode_rows, VARIANTS, strict=True)]
                )
                rows += mode_rows
    finally:
        await redis.aclose()
    for row in rows:
        if row.note:
            base = next(r for r in rows if r.case == row.case and r.baseline).median
            ratio = row.median / base
            target = TARGETS[SINGLE if "single" in row.case else BATCH]
            row.note += f": {'met' if ratio >= target else f'MISSED by {target - ratio:.2f}x'}"
    return rows


# --- profile: `python -m bench.enhanced` -------------------------------------------------------

CATEGORIES = (
    ("kafka commit (awaited)", "commit"),
    ("redis (awaited)", "redis"),
)
LIBRARIES = (
    ("/redis/", "redis-py (client CPU)"),
    ("/aiokafka/", "aiokafka (fetch, commit CPU)"),
    ("/opentelemetry/", "opentelemetry (spans, metrics)"),
    ("/pydantic", "pydantic + JSON (envelope, payload)"),
    ("/json/", "pydantic + JSON (envelope, payload)"),
    ("alpha_streaming/", "pydantic + JSON (envelope, payload)"),
    ("/middlewares/", "our middlewares (own code)"),
    ("/fast_depends/", "faststream + fast_depends"),
    ("/faststream/", "faststream + fast_depends"),
    ("selectors.py", "event loop idle (waiting on sockets)"),
    ("/asyncio/", "asyncio scheduling"),
)


class _Awaited:
    """Wall time spent awaiting consumer commits and Redis commands (patched in for the profile)."""

    def __init__(self) -> None:
        self.seconds = {"commit": 0.0, "redis": 0.0}
        self.calls = {"commit": 0, "redis": 0}

    def wrap(self, owner: Any, name: str, kind: str) -> Callable[[], None]:
        original = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.seconds[kind] += time.perf_counter() - started
                self.calls[kind] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


def _library_shares(session: Any) -> dict[str, float]:
    shares: dict[str, float] = {}
    for stack, seconds in session.frame_records:
        label = "other"
        for frame in reversed(stack):
            path = frame.split("\x00")[1] if "\x00" in frame else ""
            found = next((name for marker, name in LIBRARIES if marker in path), None)
            if found is not None:
                label = found
                break
        shares[label] = shares.get(label, 0.0) + seconds
    return shares


async def profile(bootstrap: str, redis_url: str, variant: str = ENHANCED) -> None:
    """One run of `variant` per mode under pyinstrument, with commit and Redis waits timed."""
    from aiokafka import AIOKafkaConsumer
    from pyinstrument import Profiler
    from redis.asyncio import Redis

    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with topics(bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("enhanced-profile")
            await prefill(bootstrap, topic, BATCH_MESSAGES)
            for mode, count in ((SINGLE, SINGLE_MESSAGES), (BATCH, BATCH_MESSAGES)):
                awaited = _Awaited()
                restore = [
                    awaited.wrap(AIOKafkaConsumer, "commit", "commit"),
                    awaited.wrap(Redis, "execute_command", "redis"),
                ]
                profiler = Profiler(interval=0.001, async_mode="disabled")
                try:
                    rate = await measure(variant, mode, topic, count, bootstrap, redis, profiler=profiler)
                finally:
                    for undo in restore:
                        undo()
                per_msg_ms = 1000 / rate
                name = VARIANT_NAMES[variant]
                print(f"\n[{mode}] {name}, profiled: {rate:,.0f} msg/s = {per_msg_ms:.3f} ms/msg")
                for label, kind in CATEGORIES:
                    seconds, calls = awaited.seconds[kind], awaited.calls[kind]
                    print(
                        f"  {label:<38} {seconds * 1000 / count:8.3f} ms/msg"
                        f"  ({calls:,} calls, {seconds * 1000 / max(calls, 1):.3f} ms each)"
                    )
                session = profiler.last_session
                total = session.duration
                print(
                    f"  sampled wall time by innermost library ({total:.1f} s, profiler overhead included):"
                )
                for label, seconds in sorted(_library_shares(session).items(), key=lambda kv: -kv[1]):
                    print(
                        f"    {label:<38} {100 * seconds / total:5.1f}% {seconds * 1000 / count:7.3f} ms/msg"
                    )
    finally:
        await redis.aclose()


async def bare(bootstrap: str, redis_url: str, variant: str, runs: int) -> None:
    """`runs` single-message runs of `variant`, no profiler inside: for an outside sampler (py-spy)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with topics(bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("enhanced-bare")
            await prefill(bootstrap, topic, SINGLE_MESSAGES)
            for _ in range(runs):
                rate = await measure(variant, SINGLE, topic, SINGLE_MESSAGES, bootstrap, redis)
                print(f"[single] {VARIANT_NAMES[variant]}: {rate:,.0f} msg/s")
    finally:
        await redis.aclose()


if __name__ == "__main__":
    import os

    cli = argparse.ArgumentParser(description="Profile the enhanced stack (pyinstrument).")
    cli.add_argument("--coalesced", action="store_true", help="commit_every=100 instead of 1")
    cli.add_argument("--bare", type=int, metavar="RUNS", help="no pyinstrument: RUNS single-message runs")
    options = cli.parse_args()
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    chosen = COALESCED if options.coalesced else ENHANCED
    asyncio.run(bare(servers, url, chosen, options.bare) if options.bare else profile(servers, url, chosen))
