"""`make demo`: the trading pipeline end to end, with injected faults and a report.

    python -m examples.trading_pipeline.demo [--duration 20] [--rate 10]

1. Creates the pipeline's topics and their `.dlq` twins (idempotent, as `alpha-streaming
   topics bootstrap` does) and notes every partition's log end: the run's window starts there.
2. Runs market feed, strategy runner, risk manager and the paper and zerodha trading engines in
   ONE process under `ServiceOrchestrator`, for `--duration` seconds of feed, with faults
   injected: duplicate ticks (the same envelope twice), a poison record (bytes that are no
   envelope), a venue that times out twice (transient: retried), and an instrument missing
   from the reference data (permanent: dead-lettered).
3. Waits until every consumer group has committed up to the log end, adds the missing
   instrument, replays its dead letters with `alpha_streaming._tools.dlq_replay` (what the CLI's
   `dlq replay` runs), waits again, and stops the orchestrator gracefully.
4. Reads everything back (topics, consumer-group offsets, the services' OpenTelemetry
   metrics, Redis) and prints the report. Exit status 0 when nothing was lost or doubled,
   1 with the reasons otherwise, 2 when the demo could not run at all.

Isolation between runs: each run has its own id. Consumer groups are prefixed `demo-<run>.`
and seeded at the window's start offsets, so they read only records written during this run;
ticks carry the run id as their feed session, and the report counts only records whose
correlation chain starts at one of this run's ticks. A second `make demo` on the same broker
therefore reports only its own run. Topic names stay the pipeline's real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from redis.asyncio import Redis

from alpha_streaming import (
    DedupSettings,
    InfrastructureError,
    RedpandaProducer,
    RedpandaSettings,
    ServiceOrchestrator,
    Settings,
    TopicMap,
    bootstrap_specs,
    broker_admin,
    connected_broker,
    dlq_topic,
    ensure_topics,
    parse_filters,
    replay_dlq,
    uuid7,
)
from examples.trading_pipeline import wire
from examples.trading_pipeline.feed import BASE_PRICES, UNLISTED_TOKEN, FeedPlan, MarketFeed
from examples.trading_pipeline.report import GroupPosition, Metric, RunData, analyse
from examples.trading_pipeline.risk import UnknownInstrumentError
from examples.trading_pipeline.services import InstrumentMaster, Pipeline, build_pipeline
from examples.trading_pipeline.strategies import StrategyBook
from examples.trading_pipeline.topology import NAMESPACES, PARTITIONS, consumers, dlq_topics, pipeline_topics
from middlewares import Budget, RetryPolicy

__all__ = ("main", "run_demo")

DRAIN_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 30.0
RETENTION_MS = 24 * 3600 * 1000  # demo topics keep a day of runs


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def demo_policy() -> RetryPolicy:
    """The default policy, with a venue-outage budget short enough for a 20-second demo.

    The zerodha venue times out twice; 4 attempts with 50-200 ms waits get the order through.
    """
    return RetryPolicy().with_rule(
        InfrastructureError, Budget(max_attempts=4, base_delay_s=0.05, max_delay_s=0.2)
    )


async def _until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def _group_positions(bootstrap: list[str], config: RedpandaSettings) -> list[GroupPosition]:
    positions: list[GroupPosition] = []
    for consumer in consumers():
        group = config.group_id(consumer.group)
        ends = await wire.end_offsets(bootstrap, consumer.topics)
        committed = await wire.committed_offsets(bootstrap, group)
        positions += [GroupPosition(group, tp, committed.get(tp), end) for tp, end in sorted(ends.items())]
    return positions


async def _drained(bootstrap: list[str], config: RedpandaSettings) -> bool:
    """Every group has committed up to the log end, and no record arrived meanwhile."""
    before = await wire.end_offsets(bootstrap, pipeline_topics())
    positions = await _group_positions(bootstrap, config)
    after = await wire.end_offsets(bootstrap, pipeline_topics())
    return before == after and all(p.lag == 0 for p in positions)


def _read_metrics(reader: InMemoryMetricReader) -> list[Metric]:
    data = reader.get_metrics_data()
    found: list[Metric] = []
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if isinstance(point, NumberDataPoint):
                        found.append(Metric(metric.name, attributes, float(point.value)))
                    elif isinstance(point, HistogramDataPoint):
                        found.append(Metric(metric.name + ".count", attributes, float(point.count)))
                        found.append(Metric(metric.name + ".sum", attributes, float(point.sum)))
    return found


async def _replay_dead_signals(pipeline: Pipeline, config: RedpandaSettings, start: wire.Offsets) -> int:
    """Replay the unknown-instrument dead letters of this run, as `alpha-streaming dlq replay` does."""
    group = config.group_id("replay")
    topics = [dlq_topic(TopicMap(ns).signals_raw) for ns in NAMESPACES]
    # The replay group starts at this run's window, so older runs' dead letters stay put.
    await wire.seed_group(
        config.bootstrap_servers, group, {tp: o for tp, o in start.items() if tp.topic in topics}
    )
    replayed = 0
    filters = parse_filters([f"error={UnknownInstrumentError.__name__}"])
    for topic in topics:
        result = await replay_dlq(pipeline.feed.broker, topic, group_id=group, filters=filters)
        say(f"replay {topic}: read {result.read}, replayed {result.replayed}, skipped {result.skipped}")
        replayed += result.replayed
    return replayed


async def run_demo(*, duration_s: float, rate_per_s: float, settings: Settings | None = None) -> int:
    """Run the pipeline once and print the report; returns the process exit status."""
    run_id = datetime.now(UTC).strftime("%H%M%S") + "-" + uuid7().hex[-6:]
    base = settings or Settings()
    config = base.redpanda.model_copy(
        update={"group_id_prefix": f"demo-{run_id}.", "client_id": f"trading-demo-{run_id}"}
    )
    settings = base.model_copy(
        update={"redpanda": config, "dedup": DedupSettings(done_ttl_s=3600.0, lease_ttl_s=10.0)}
    )
    bootstrap = config.bootstrap_servers
    kafka = config.bootstrap_servers_text
    say(f"run {run_id}: Kafka {kafka}, feed {duration_s:.0f} s at {rate_per_s:.0f} ticks/s")

    topics = [*pipeline_topics()]
    specs = bootstrap_specs(
        topics,
        partitions=PARTITIONS,
        replication_factor=None,  # the cluster's default.replication.factor
        retention_ms=RETENTION_MS,
        dlq_retention_ms=RETENTION_MS,
        with_dlq=True,
    )
    async with connected_broker(config) as admin_broker:
        results = await ensure_topics(broker_admin(admin_broker), specs)
    created = sum(1 for r in results if r.status.value == "created")
    say(f"topics: {len(results)} ready ({created} created now)")

    window = [*topics, *dlq_topics()]
    start = await wire.end_offsets(bootstrap, window)
    for consumer in consumers():
        await wire.seed_group(
            bootstrap,
            config.group_id(consumer.group),
            {tp: o for tp, o in start.items() if tp.topic in consumer.topics},
        )

    redis = Redis.from_url(settings.redis_url)
    instruments = InstrumentMaster(redis, f"demo:{run_id}:instruments")
    for token in BASE_PRICES:
        await instruments.add(token)
    await redis.expire(instruments.key, 24 * 3600)

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    pipeline = build_pipeline(
        settings, redis, session=run_id, instruments=instruments, meter_provider=meters, policy=demo_policy()
    )
    orchestrator = ServiceOrchestrator(*pipeline.all, graceful_timeout=30.0)
    replayed = 0
    try:
        await orchestrator.start()

        async def ready() -> bool:
            return bool((await orchestrator.health()).ready)

        await _until(ready, timeout_s=READY_TIMEOUT_S, what="every service ready (partitions assigned)")
        say(f"{len(orchestrator.names)} services ready: {', '.join(orchestrator.names)}")

        producer = RedpandaProducer.from_broker(pipeline.feed.broker)
        await producer.start()
        plan = FeedPlan(rate_per_s=rate_per_s, duration_s=duration_s)
        say("feed running; injecting duplicates, a poison tick, an unlisted instrument, a flaky venue")
        await MarketFeed(producer, run_id, plan).run()
        await producer.flush()

        async def drained() -> bool:
            return await _drained(bootstrap, config)

        await _until(drained, timeout_s=DRAIN_TIMEOUT_S, what="the pipeline draining")
        say("pipeline drained; adding the missing instrument and replaying its dead letters")
        await instruments.add(UNLISTED_TOKEN)
        replayed = await _replay_dead_signals(pipeline, config, start)
        await _until(drained, timeout_s=DRAIN_TIMEOUT_S, what="the replayed events being processed")
    finally:
        say("stopping the orchestrator (graceful: finish in-flight work, commit, flush)")
        await orchestrator.stop()
        await redis.delete(instruments.key)
        await redis.aclose()

    end = await wire.end_offsets(bootstrap, window)
    data = RunData(
        run_id=run_id,
        records=await wire.read_range(bootstrap, start, end),
        metrics=_read_metrics(reader),
        groups=await _group_positions(bootstrap, config),
        strategies=len(StrategyBook().strategies),
        replayed=replayed,
    )
    meters.shutdown()
    report = analyse(data)
    print()
    print(report.text(), flush=True)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.trading_pipeline.demo", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of market feed (default 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="ticks per second (default 10)")
    parser.add_argument("--verbose", action="store_true", help="show the services' logs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # FastStream's broker loggers set their own level and log every message at INFO.
        logging.disable(logging.INFO)
    try:
        status = asyncio.run(run_demo(duration_s=args.duration, rate_per_s=args.rate))
    except Exception as exc:
        print(f"[demo] could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
