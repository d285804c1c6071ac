"""Direct tier vs raw aiokafka: producer and consumer throughput on the same broker, same run.

Producer: 100k pipelined sends (queue all, wait for every ack once), idempotent, acks=all and
the same linger/batch/compression on both sides (taken from one `RedpandaSettings`), a fresh
6-partition topic per run. Consumer: one pre-filled topic, a fresh group per run, the clock
starts once the group has assigned partitions; each record's value is read. Per-record commits:
raw `getone` without commits vs `commit(record)` (background) vs `commit(record, wait=True)`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from alpha_streaming import RedpandaConsumer, RedpandaProducer, RedpandaSettings, make_broker
from bench._common import Row, Stopwatch, interleaved, payloads, topics, wait_assigned

Payload = list[tuple[bytes, bytes]]
SYNC_COMMIT_RECORDS = 1_000  # ~170 records/s: ~6 s a run


def raw_producer_options(config: RedpandaSettings) -> dict[str, Any]:
    """Exactly what `make_broker` gives the broker's producer (PLAINTEXT bench stack)."""
    return {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": config.linger_ms,
        "compression_type": config.compression_type,
        "max_batch_size": config.max_batch_size,
        "request_timeout_ms": config.request_timeout_ms,
    }


async def produce_raw(config: RedpandaSettings, topic: str, data: Payload) -> float:
    producer = AIOKafkaProducer(**raw_producer_options(config))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"warm-up")  # metadata + producer id
        clock = Stopwatch()
        futures = [await producer.send(topic, value, key=key) for key, value in data]
        await asyncio.gather(*futures)
        return clock.rate(len(data))
    finally:
        await producer.stop()


async def produce_tier(config: RedpandaSettings, topic: str, data: Payload) -> float:
    async with RedpandaProducer(config) as producer:
        await producer.send(topic=topic, key=b"warm-up", value=b"warm-up")
        clock = Stopwatch()
        await producer.send_many(topic, data)
        return clock.rate(len(data))


def raw_consumer(config: RedpandaSettings, topic: str) -> AIOKafkaConsumer:
    # The same factory the direct tier uses, so both sides get identical connection settings.
    builder = make_broker(config).config.broker_config.builder
    assert isinstance(builder, functools.partial), "FastStream's consumer factory changed shape"
    options = dict(builder.keywords)
    return AIOKafkaConsumer(
        topic,
        **options,
        group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


def tier_consumer(config: RedpandaSettings, topic: str) -> RedpandaConsumer:
    return RedpandaConsumer(config, topics=[topic], group_id=f"bench-tier-{uuid.uuid4().hex[:8]}")


async def consume_raw_iter(config: RedpandaSettings, topic: str, count: int) -> float:
    consumer = raw_consumer(config, topic)
    await consumer.start()
    try:
        await wait_assigned(consumer.assignment)
        clock, seen = Stopwatch(), 0
        async for record in consumer:
            _ = record.value
            seen += 1
            if seen == count:
                break
        return clock.rate(seen)
    finally:
        await consumer.stop()


async def consume_tier_iter(config: RedpandaSettings, topic: str, count: int) -> float:
    async with tier_consumer(config, topic) as consumer:
        await wait_assigned(consumer.assignment)
        clock, seen = Stopwatch(), 0
        async for record in consumer:
            _ = record.value
            seen += 1
            if seen == count:
                break
        return clock.rate(seen)


async def consume_tier_commit(config: RedpandaSettings, topic: str, count: int, *, wait: bool) -> float:
    """`commit(record)` after each record: recorded, committed in the background (the documented
    way), or with `wait=True` one broker round trip each (the old behaviour). The clock stops
    once every commit is acknowledged."""
    async with tier_consumer(config, topic) as consumer:
        await wait_assigned(consumer.assignment)
        clock, seen = Stopwatch(), 0
        async for record in consumer:
            _ = record.value
            await consumer.commit(record, wait=wait)
            seen += 1
            if seen == count:
                break
        await consumer.flush_commits()
        return clock.rate(seen)


async def consume_raw_batch(config: RedpandaSettings, topic: str, count: int) -> float:
    consumer = raw_consumer(config, topic)
    await consumer.start()
    try:
        await wait_assigned(consumer.assignment)
        clock, seen = Stopwatch(), 0
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    _ = record.value
                seen += len(records)
        return clock.rate(seen)
    finally:
        await consumer.stop()


async def consume_tier_batch(config: RedpandaSettings, topic: str, count: int) -> float:
    async with tier_consumer(config, topic) as consumer:
        await wait_assigned(consumer.assignment)
        clock, seen = Stopwatch(), 0
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000)
            for record in batch:
                _ = record.value
            seen += len(batch)
        return clock.rate(seen)


async def run(args: argparse.Namespace) -> list[Row]:
    config = RedpandaSettings(bootstrap_servers=args.bootstrap, client_id="alpha-bench")
    data = payloads(args.messages, args.size)
    rows: list[Row] = []
    async with topics(args.bootstrap) as new_topic:

        def producing(produce: Callable[[RedpandaSettings, str, Payload], Awaitable[float]]) -> Any:
            async def measure() -> float:
                return await produce(config, await new_topic("produce"), data)

            return measure

        raw = Row("produce (pipelined)", "raw AIOKafkaProducer", baseline=True)
        tier = Row("produce (pipelined)", "RedpandaProducer.send_many")
        await interleaved(args.runs, [(raw, producing(produce_raw)), (tier, producing(produce_tier))])
        rows += [raw, tier]

        filled = await new_topic("consume")
        await produce_raw(config, filled, data)
        total = args.messages + 1  # the warm-up record

        def consuming(consume: Callable[[RedpandaSettings, str, int], Awaitable[float]]) -> Any:
            return lambda: consume(config, filled, total)

        # Per-record commits: the target is the documented way >= 0.8x raw getone (no commits).
        # The awaited commit is a broker round trip per record, so it reads fewer records.
        waited = min(total, SYNC_COMMIT_RECORDS // (5 if args.quick else 1))
        case = "consume + commit(record) each"
        raw = Row(case, "raw AIOKafkaConsumer getone, no commit", baseline=True)
        fast = Row(case, "RedpandaConsumer, commit(record) (documented)")
        sync = Row(case, "RedpandaConsumer, commit(record, wait=True)", note=f"{waited:,} records a run")
        await interleaved(
            args.runs,
            [
                (raw, consuming(consume_raw_iter)),
                (fast, consuming(functools.partial(consume_tier_commit, wait=False))),
                (sync, lambda: consume_tier_commit(config, filled, waited, wait=True)),
            ],
        )
        rows += [raw, fast, sync]

        for case, raw_fn, tier_fn, raw_name, tier_name in (
            (
                "consume (async for)",
                consume_raw_iter,
                consume_tier_iter,
                "raw AIOKafkaConsumer",
                "RedpandaConsumer",
            ),
            (
                "consume (getmany)",
                consume_raw_batch,
                consume_tier_batch,
                "raw AIOKafkaConsumer",
                "RedpandaConsumer",
            ),
        ):
            raw = Row(case, raw_name, baseline=True)
            tier = Row(case, tier_name)
            await interleaved(args.runs, [(raw, consuming(raw_fn)), (tier, consuming(tier_fn))])
            rows += [raw, tier]
    return rows
