"""End-to-end latency, produce -> handler, at fixed rates (open loop), plain vs built service.

A producer in a separate OS process sends at a fixed rate on a schedule (it never waits for
acks before the next send), stamping each record with its wall-clock send time in a header
(`time.time_ns()`); the handler subtracts that from its own `time.time_ns()` (one machine, one
clock). The first second of each run is warm-up and not counted. Every rate and variant gets a
fresh 3-partition topic, a fresh consumer group and a fresh process (a deployed service's heap,
not the benchmark runner's); the service joins before sending starts.

Variants:
- `plain`: a FastStream subscriber, no middlewares, ACK_FIRST (aiokafka auto-commit).
- `builder, defaults`: a `StreamServiceBuilder` service (envelope, error routing, Redis dedup;
  MANUAL; background commits), one handler at a time in partition order (`concurrency=1`).
- `builder, concurrency=16`: the same with up to 16 handlers at once, in key order.

A variant that cannot keep up is shown as such: `handled/s` below the target, a `backlog`
(records sent but not yet handled when sending stopped) and latencies that grow with the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from pydantic import BaseModel

from alpha_streaming import (
    DedupSettings,
    RedpandaSettings,
    Settings,
    StreamServiceBuilder,
    make_broker,
)
from bench._common import Column, Table, envelope_record, percentiles, topics, wait_assigned
from bench.direct import raw_producer_options
from middlewares._loop_context import LoopContext

RATES = (1_000, 5_000)
PARTITIONS = 3
SENT_HEADER = "bench-sent-ns"
PLAIN, DEFAULTS, CONCURRENT = "plain", "defaults", "concurrent"
VARIANT_NAMES = {
    PLAIN: "plain subscriber, ACK_FIRST",
    DEFAULTS: "builder, defaults (concurrency=1)",
    CONCURRENT: "builder, concurrency=16",
}
# The record's headers carry the send time. FastStream's own `KafkaMessage` annotation resolves
# through a worker thread per message (bench/README.md, Issue 12 §1): both sides read it on the loop.
Message = Annotated[StreamMessage[Any], LoopContext("message")]
DEDUP = DedupSettings(done_ttl_s=600)  # bench keys expire soon instead of after a week


class Tick(BaseModel):
    """The latency payload: a small market tick."""

    seq: int
    symbol: str
    price: str


@dataclass(frozen=True)
class Timing:
    """How long one run sends, how much of it is warm-up, how long it may drain afterwards."""

    send_s: float
    warmup_s: float
    drain_s: float


@dataclass
class Recorder:
    """Send and receive times (ns) of every handled record."""

    samples: list[tuple[int, int]] = field(default_factory=list)

    def record(self, headers: Mapping[str, Any]) -> None:
        received = time.time_ns()
        self.samples.append((int(headers[SENT_HEADER]), received))


# --- the paced producer (a separate process) ---------------------------------------------------


async def pace(bootstrap: str, topic: str, rate: int, seconds: float) -> None:
    """Send `rate`/s for `seconds`; print "<sent> <send span in s>" the moment the last is sent."""
    count = int(rate * seconds)
    records = [envelope_record(Tick(seq=n, symbol="NIFTY", price="101.25"), n) for n in range(count)]
    producer = AIOKafkaProducer(**raw_producer_options(RedpandaSettings(bootstrap_servers=bootstrap)))
    await producer.start()
    try:
        await producer.partitions_for(topic)  # metadata before the clock starts
        started = time.perf_counter()
        for n, (key, value, headers) in enumerate(records):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # open loop: the schedule, not the acks, sets the pace
            stamp = (SENT_HEADER, str(time.time_ns()).encode())
            await producer.send(topic, value, key=key, headers=[*headers, stamp])
        print(count, time.perf_counter() - started, flush=True)
        await producer.flush()
    finally:
        await producer.stop()


# --- the consuming side (this process) ---------------------------------------------------------


def _plain(config: RedpandaSettings, topic: str, recorder: Recorder) -> KafkaBroker:
    broker = make_broker(config, logger=None)

    @broker.subscriber(topic, group_id=f"bench-lat-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest")
    async def plain(body: dict[str, Any], msg: Message) -> None:
        recorder.record(msg.headers)

    return broker


def _built(
    config: RedpandaSettings, topic: str, recorder: Recorder, redis: aioredis.Redis, concurrency: int
) -> Any:
    async def on_tick(tick: Tick, message: Message) -> None:
        recorder.record(message.headers)

    settings = Settings(redpanda=config, dedup=DEDUP)
    return (
        StreamServiceBuilder("bench-latency", config, settings)
        .with_redis(redis)
        .with_error_handling()
        .add_consumer_handler(
            topics=[topic],
            group_id=f"bench-lat-{uuid.uuid4().hex[:8]}",
            handler_func=on_tick,
            concurrency=concurrency,
        )
        .build()
    )


async def _until(condition: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110  # polls counters
        await asyncio.sleep(0.02)


async def measure(
    variant: str, rate: int, topic: str, timing: Timing, bootstrap: str, redis: aioredis.Redis
) -> dict[str, Any]:
    """One run of `variant` at `rate`: latency percentiles (ms), achieved rates and backlog."""
    config = RedpandaSettings(bootstrap_servers=bootstrap, client_id="alpha-bench")
    recorder = Recorder()
    if variant == PLAIN:
        broker = _plain(config, topic, recorder)
        start, stop = broker.start, broker.stop
    else:
        service = _built(config, topic, recorder, redis, 16 if variant == CONCURRENT else 1)
        broker, start, stop = service.broker, service.start, service.stop
    await start()
    try:
        subscriber: Any = broker.subscribers[0]
        await wait_assigned(lambda: subscriber.consumer.assignment() if subscriber.consumer else set())
        producer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.latency",
            bootstrap,
            topic,
            str(rate),
            str(timing.send_s),
            stdout=asyncio.subprocess.PIPE,
        )
        line = await producer.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the paced producer (rate {rate}/s) exited without a report; see its stderr")
        sent_text, span_text = line.split()
        sent, span = int(sent_text), float(span_text)
        handled_when_sent = len(recorder.samples)
        await producer.wait()
        await _until(lambda: len(recorder.samples) >= sent, timing.drain_s)
    finally:
        await stop()
    first_sent = min((s for s, _ in recorder.samples), default=0)
    counted = [(r - s) / 1e6 for s, r in recorder.samples if s >= first_sent + timing.warmup_s * 1e9]
    p50, p99, p999 = percentiles(counted)
    return {
        "rate": rate,
        "variant": VARIANT_NAMES[variant],
        "sent_per_s": sent / span,
        "handled_per_s": handled_when_sent / span,
        "backlog": sent - handled_when_sent,
        "unhandled": sent - len(recorder.samples),
        "samples": len(counted),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "kept_up": "yes" if len(recorder.samples) >= sent and handled_when_sent >= 0.95 * sent else "NO",
    }


COLUMNS = (
    Column("rate", "target msg/s", "{:,}"),
    Column("variant", "variant"),
    Column("sent_per_s", "sent/s", "{:,.0f}"),
    Column("handled_per_s", "handled/s", "{:,.0f}"),
    Column("backlog", "backlog at end", "{:,}"),
    Column("p50_ms", "p50 ms", "{:,.2f}"),
    Column("p99_ms", "p99 ms", "{:,.2f}"),
    Column("p999_ms", "p99.9 ms", "{:,.2f}"),
    Column("samples", "samples", "{:,}"),
    Column("kept_up", "kept up"),
)


async def run(args: argparse.Namespace) -> list[Table]:
    """The runner's entry point (`python -m bench latency`)."""
    quick = getattr(args, "quick", False)
    timing = (
        Timing(send_s=2.0, warmup_s=0.5, drain_s=1.0)
        if quick
        else Timing(send_s=8.0, warmup_s=1.0, drain_s=5.0)
    )
    table = Table(f"produce -> handler latency, open loop, {timing.send_s:g} s per run", COLUMNS)
    # The built service logs two INFO lines per message through FastStream's access logger (the
    # plain broker has none): not what is measured here.
    async with topics(args.bootstrap, partitions=PARTITIONS) as new_topic:
        for rate in RATES:
            for variant in (PLAIN, DEFAULTS, CONCURRENT):
                topic = await new_topic(f"latency-{rate}")
                table.rows.append(await _in_own_process(variant, rate, topic, timing, args))
    table.notes += [
        f"first {timing.warmup_s:g} s of each run not counted; `backlog at end` = sent - handled when "
        f"sending stopped; then up to {timing.drain_s:g} s to drain",
        "producer: the project's settings (idempotent, acks=all, linger_ms=5), in its own process; "
        "each consumer too (a fresh process per run, as a deployed service runs: the garbage "
        "collector's passes then walk that service's heap, not the benchmark runner's)",
        "`kept up` = NO when a variant handled < 95% of what was sent by the time sending stopped, or "
        "did not drain the rest in time: its latencies then grow with the run length",
    ]
    return [table]


async def _in_own_process(
    variant: str, rate: int, topic: str, timing: Timing, args: argparse.Namespace
) -> dict[str, Any]:
    """`measure` in a fresh process: its result is the JSON line it prints last."""
    spec = [variant, str(rate), topic, str(timing.send_s), str(timing.warmup_s), str(timing.drain_s)]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.latency", "measure", *spec, args.bootstrap, args.redis_url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await child.communicate()
    if child.returncode != 0 or not out.strip():
        raise RuntimeError(
            f"latency run {variant} at {rate}/s failed (exit {child.returncode}); see its stderr"
        )
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


async def _measure_here(argv: list[str]) -> None:
    variant, rate, topic, send_s, warmup_s, drain_s, bootstrap, redis_url = argv
    # The built service logs two INFO lines per message through FastStream's access logger (the
    # plain broker has none): not what is measured here.
    logging.disable(logging.INFO)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        timing = Timing(float(send_s), float(warmup_s), float(drain_s))
        print(json.dumps(await measure(variant, int(rate), topic, timing, bootstrap, redis)), flush=True)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    # `python -m bench.latency measure VARIANT RATE TOPIC SEND_S WARMUP_S DRAIN_S BOOTSTRAP REDIS_URL`:
    # one consumer run; `python -m bench.latency BOOTSTRAP TOPIC RATE SECONDS`: the paced producer.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if sys.argv[1] == "measure":
        asyncio.run(_measure_here(sys.argv[2:]))
    else:
        asyncio.run(pace(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
