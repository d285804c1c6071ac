"""Key-ordered concurrency, a handler awaiting 5 ms of I/O (`python -m bench concurrency`).

One pre-filled topic (6 partitions, 64 keys, enhanced-tier envelopes). Each run is a fresh
`StreamServiceBuilder` service at its defaults (envelope, error routing, Redis dedup, background
commits) in a fresh consumer group, reading the whole topic; the handler awaits `IO_S` (a
database or HTTP call) and records its key's sequence number, so every run also checks that each
key's records were handled in order. The reference is plain FastStream's own concurrency,
`max_workers=64` on an ACK_FIRST subscriber: as fast as it gets, with no order at all.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from alpha_streaming import DedupSettings, RedpandaSettings, Settings, StreamServiceBuilder, make_broker
from bench._common import Fill, Row, fills, interleaved, prefill_envelopes, topics, wait_assigned
from middlewares import CurrentEnvelope

IO_S = 0.005
PARTITIONS = 6
MESSAGES = 6_000
SEQUENTIAL_MESSAGES = 600  # one handler at a time: ~5 ms each
TARGET = 3_000  # msg/s with concurrency=64 (issue 12)
RUN_TIMEOUT_S = 120.0
DEDUP = DedupSettings(done_ttl_s=600)


class _Run:
    """Counts handled records and keeps each key's order."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.handled = 0
        self.last: dict[str, int] = {}
        self.out_of_order = 0
        self.done = asyncio.Event()
        self.started = 0.0

    async def handle(self, key: str, seq: int) -> None:
        if not self.started:
            self.started = time.perf_counter()
        await asyncio.sleep(IO_S)
        if seq < self.last.get(key, -1):
            self.out_of_order += 1
        self.last[key] = seq
        self.handled += 1
        if self.handled >= self.expected:
            self.done.set()

    def rate(self) -> float:
        return self.handled / (time.perf_counter() - self.started)


def _seq(fill: Fill) -> int:
    return int(fill.order_id.removeprefix("o-"))


async def _built(bootstrap: str, topic: str, redis: aioredis.Redis, concurrency: int, run: _Run) -> float:
    async def on_fill(fill: Fill, envelope: CurrentEnvelope) -> None:
        await run.handle(envelope.key or "", _seq(fill))

    config = RedpandaSettings(bootstrap_servers=bootstrap)
    service = (
        StreamServiceBuilder("bench-concurrency", config, Settings(redpanda=config, dedup=DEDUP))
        .with_redis(redis)
        .add_consumer_handler(
            topics=[topic],
            group_id=f"bench-cc-{uuid.uuid4().hex[:8]}",
            handler_func=on_fill,
            concurrency=concurrency,
        )
        .build()
    )
    await service.start()
    try:
        await asyncio.wait_for(run.done.wait(), RUN_TIMEOUT_S)
        return run.rate()
    finally:
        await service.stop()


async def _plain(bootstrap: str, topic: str, run: _Run) -> float:
    broker = make_broker(RedpandaSettings(bootstrap_servers=bootstrap), logger=None)

    @broker.subscriber(
        topic, group_id=f"bench-cc-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest", max_workers=64
    )
    async def plain(body: dict[str, Any]) -> None:
        await run.handle(body["key"], _seq(Fill.model_validate(body["data"])))

    await broker.start()
    try:
        subscriber: Any = broker.subscribers[0]
        await wait_assigned(lambda: subscriber.consumer.assignment())
        await asyncio.wait_for(run.done.wait(), RUN_TIMEOUT_S)
        return run.rate()
    finally:
        await broker.stop()


async def run(args: argparse.Namespace) -> list[Row]:
    """The runner's entry point."""
    count = min(args.messages, MESSAGES)
    sequential = min(count, SEQUENTIAL_MESSAGES)
    logging.disable(logging.INFO)  # FastStream's access lines are not what is measured
    redis = aioredis.Redis.from_url(args.redis_url)
    case = f"handler awaits {IO_S * 1000:g} ms ({count:,} msgs, 64 keys)"
    plain = Row(case, "plain FastStream, max_workers=64 (no order)", baseline=True)
    one = Row(case, "builder, concurrency=1 (partition order)", note=f"{sequential:,} msgs")
    many = Row(case, "builder, concurrency=64 (key order)", note=f"target >= {TARGET:,} msg/s")
    variants = ((plain, "plain"), (one, "one"), (many, "many"))
    disorder: dict[str, int] = {}

    def measuring(row: Row, variant: str, topic: str) -> Any:
        async def measure() -> float:
            expected = sequential if variant == "one" else count
            state = _Run(expected)
            if variant == "plain":
                rate = await _plain(args.bootstrap, topic, state)
            else:
                rate = await _built(args.bootstrap, topic, redis, 1 if variant == "one" else 64, state)
            disorder[row.variant] = disorder.get(row.variant, 0) + state.out_of_order
            return rate

        return measure

    try:
        async with topics(args.bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("concurrency")
            await prefill_envelopes(args.bootstrap, topic, fills(count))
            await interleaved(
                args.runs,
                [(row, measuring(row, name, topic)) for row, name in variants],
            )
    finally:
        await redis.aclose()
        logging.disable(logging.NOTSET)
    for row in (one, many):
        row.note += f"; records out of key order: {disorder.get(row.variant, 0)}"
    many.note += f"; {'met' if many.median >= TARGET else 'MISSED'}"
    return [plain, one, many]
