"""Enhanced tier: messages/s through a FastStream subscriber with the full stack vs none.

One pre-filled topic of envelope-encoded events; every run reads all of it with a fresh consumer
group (and a fresh dedup namespace), so every variant reads identical bytes from the same broker.
Runs are interleaved (variant A, B, C, A, B, C, ...) and the median of the repetitions is kept.

Variants, each in single-message and batch mode:
- `plain`: no middlewares, FastStream's Kafka default ACK_FIRST (aiokafka auto-commit every 5 s;
  neither at-least-once nor at-most-once). The baseline the targets are stated against.
- `plain+commit`: no middlewares, MANUAL with an explicit offset commit per message (per batch
  in batch mode): the cost of at-least-once alone, without any middleware.
- `enhanced`: `enhanced_stack` (metrics + spans on an SDK tracer provider that exports nowhere,
  error routing with its commits, envelope validation, Redis dedup), MANUAL.

Throughput is measured from the moment the first message reaches the handler to the moment the
last one is done, so the consumer-group join is not counted. Targets (issue 4): enhanced >= 0.5x
plain in single-message mode, >= 0.7x in batch mode.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import BaseModel

from alpha_streaming.broker import make_broker
from alpha_streaming.envelope import EventEnvelope
from alpha_streaming.settings import DedupSettings, RedpandaSettings

SINGLE, BATCH = "single", "batch"
PLAIN, PLAIN_COMMIT, ENHANCED = "plain", "plain+commit", "enhanced"
TARGETS = {SINGLE: 0.5, BATCH: 0.7}
PARTITIONS = 3
BATCH_MAX_RECORDS = 500
RUN_TIMEOUT_S = 120.0


class Fill(BaseModel):
    """The benchmark's payload: a fill of the kind the trading pipeline carries."""

    order_id: str
    symbol: str
    qty: int
    price: str
    strategy: str


@dataclass(frozen=True, slots=True)
class Result:
    variant: str
    mode: str
    rates: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


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
    policy = AckPolicy.ACK_FIRST if variant == PLAIN else AckPolicy.MANUAL
    options: dict[str, Any] = {
        "group_id": f"bench-{uuid.uuid4().hex[:10]}",
        "auto_offset_reset": "earliest",
        "ack_policy": policy,
    }
    if mode == BATCH:
        options.update(batch=True, max_records=BATCH_MAX_RECORDS)
    subscriber = broker.subscriber(topic, **options)

    if variant == ENHANCED and mode == SINGLE:

        @subscriber
        async def enhanced_one(fill: Fill) -> None:
            clock.start()
            clock.finish(1)

    elif variant == ENHANCED:

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
    from middlewares.stack import enhanced_stack
    from opentelemetry.sdk.trace import TracerProvider

    middlewares: Sequence[Any] = ()
    if variant == ENHANCED:
        middlewares = enhanced_stack(
            service=f"bench-{uuid.uuid4().hex[:8]}",  # a fresh dedup namespace: nothing seen yet
            redis=redis,
            dedup=DedupSettings(),
            tracer_provider=TracerProvider(),  # spans are recorded, exported nowhere
        )
    # FastStream logs every message at `log_level`; DEBUG keeps that out of both sides' numbers.
    broker = make_broker(
        RedpandaSettings(bootstrap_servers=bootstrap), middlewares=middlewares, log_level=logging.DEBUG
    )
    clock = _Clock(count)
    _subscribe(broker, topic, variant, mode, clock)
    await broker.start()
    try:
        if profiler is not None:
            profiler.start()
        await asyncio.wait_for(clock.done.wait(), RUN_TIMEOUT_S)
        if profiler is not None:
            profiler.stop()
    finally:
        await broker.stop()
        for middleware in middlewares:
            shutdown: Callable[[], None] | None = getattr(middleware, "shutdown", None)
            if shutdown is not None:
                shutdown()
    return clock.rate


async def _create_topic(bootstrap: str, partitions: int) -> tuple[str, Callable[[], Awaitable[None]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    topic = f"paper.bench.enhanced-{uuid.uuid4().hex[:8]}"
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])

    async def drop() -> None:
        try:
            await admin.delete_topics([topic, topic + ".dlq"])
        except Exception:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    return topic, drop


async def run_all(bootstrap: str, redis_url: str, count: int, repeat: int) -> list[Result]:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(redis_url)
    topic, drop = await _create_topic(bootstrap, PARTITIONS)
    try:
        await prefill(bootstrap, topic, count)
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeat):
            for mode in (SINGLE, BATCH):
                for variant in (PLAIN, PLAIN_COMMIT, ENHANCED):
                    rate = await measure(variant, mode, topic, count, bootstrap, redis)
                    rates.setdefault((variant, mode), []).append(rate)
        return [Result(variant, mode, tuple(r)) for (variant, mode), r in rates.items()]
    finally:
        await drop()
        await redis.aclose()


def table(results: Sequence[Result]) -> str:
    by_key = {(r.variant, r.mode): r for r in results}
    lines = [
        f"{'mode':<7} {'variant':<13} {'msg/s (median)':>15} {'runs':>26} {'x plain':>8} {'target':>7}",
    ]
    for mode in (SINGLE, BATCH):
        base = by_key[(PLAIN, mode)].median
        for variant in (PLAIN, PLAIN_COMMIT, ENHANCED):
            result = by_key[(variant, mode)]
            runs = ", ".join(f"{r:,.0f}" for r in result.rates)
            ratio = result.median / base
            target = ""
            if variant == ENHANCED:
                target = ("ok " if ratio >= TARGETS[mode] else "MISS ") + f">={TARGETS[mode]}"
            lines.append(
                f"{mode:<7} {variant:<13} {result.median:>15,.0f} {runs:>26} {ratio:>8.2f} {target:>7}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.enhanced")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    results = asyncio.run(run_all(args.bootstrap, args.redis, args.count, args.repeat))
    print(table(results))


if __name__ == "__main__":
    main()
