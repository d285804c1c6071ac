"""The service under fault injection: `faststream run tests.fault.ledger_service:app`.

Built with `StreamServiceBuilder` exactly as a user would (dedup, error routing, metrics), all
configuration from the environment (`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`, `ALPHA_*`; the Redis
client is `alpha_streaming.redis_client`, a Redis Cluster client under `ALPHA_REDIS_CLUSTER=true`), plus:
- `FAULT_SERVICE`, `FAULT_TOPIC`, `FAULT_GROUP`: what it is called and consumes;
- `FAULT_LEDGER_DIR`: where the handler records its side effect, one line per completed event
  (`event_id partition offset pid time`), appended with one unbuffered `write` to a file of its own
  process, so a SIGKILL keeps every effect that happened and invents none;
- every 100 ms the process's counters (`alpha.messages` by outcome, Redis outages by mode) go to
  `FAULT_LEDGER_DIR/metrics-<pid>.json`, so the suite can report duplicates prevented.

An order's payload may ask for trouble: `slow_s` sleeps before the effect (a handler slower than
`max_poll_interval`), `fail_first` raises a transient error on the first attempt in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import BaseModel

from alpha_streaming import Settings, StreamServiceBuilder, TransientError, redis_client
from middlewares import CurrentBrokerContext, CurrentEnvelope

METRICS_EVERY_S = 0.1


class FaultOrder(BaseModel):
    seq: int
    slow_s: float = 0.0
    fail_first: bool = False


class Ledger:
    """Appends one line per effect with a single `os.write` (atomic for short appends)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(
            directory / f"ledger-{os.getpid()}.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )

    def record(self, event_id: str, partition: int, offset: int) -> None:
        os.write(self.fd, f"{event_id} {partition} {offset} {os.getpid()} {time.time():.3f}\n".encode())


COUNTED = {"alpha.messages": "outcome", "alpha.dedup.redis_outage": "mode"}


def outcome_counts(reader: InMemoryMetricReader) -> dict[str, int]:
    """`{"outcome:processed": n, ..., "mode:paused": n}` from this process's counters."""
    counts: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                label = COUNTED.get(metric.name)
                if label is None:
                    continue
                for point in metric.data.data_points:
                    value = (point.attributes or {}).get(label, "?")
                    key = f"{label}:{value}"
                    counts[key] = counts.get(key, 0) + int(point.value)  # type: ignore[union-attr]
    return counts


async def publish_counts(reader: InMemoryMetricReader, path: Path) -> None:
    while True:
        await asyncio.sleep(METRICS_EVERY_S)
        write_counts(reader, path)


def write_counts(reader: InMemoryMetricReader, path: Path) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(outcome_counts(reader)))
    partial.replace(path)


settings = Settings()
ledger_dir = Path(os.environ["FAULT_LEDGER_DIR"])
ledger = Ledger(ledger_dir)
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])
failed_once: set[str] = set()


async def handle(order: FaultOrder, envelope: CurrentEnvelope, ctx: CurrentBrokerContext) -> None:
    if order.fail_first and envelope.id not in failed_once:
        failed_once.add(envelope.id)
        raise TransientError(f"order {order.seq}: first attempt fails on purpose")
    if order.slow_s:
        await asyncio.sleep(order.slow_s)
    ledger.record(envelope.id, ctx.partition, ctx.offset)


service = (
    StreamServiceBuilder(os.environ["FAULT_SERVICE"], settings.redpanda, settings)
    .with_redis(redis_client(settings))
    .with_error_handling()
    .with_metrics(meter_provider=meter_provider)
    .add_consumer_handler(
        topics=[os.environ["FAULT_TOPIC"]], group_id=os.environ["FAULT_GROUP"], handler_func=handle
    )
    .build()
)
app = service.app
metrics_path = ledger_dir / f"metrics-{os.getpid()}.json"
_tasks: list[asyncio.Task[None]] = []


@app.after_startup
async def start_publishing_counts() -> None:
    _tasks.append(asyncio.create_task(publish_counts(reader, metrics_path)))
    (ledger_dir / f"ready-{os.getpid()}").touch()


@app.after_shutdown
async def final_counts() -> None:
    for task in _tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    write_counts(reader, metrics_path)
    meter_provider.shutdown()
