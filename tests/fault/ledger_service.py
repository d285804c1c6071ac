"""The service under fault injection: `faststream run tests.fault.ledger_service:app`.

Built with `StreamServiceBuilder` exactly as a user would (dedup, error routing, metrics), all
configuration from the environment (`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`, `ALPHA_*`; the Redis
client is `alpha_streaming.redis_client`, a Redis Cluster client under `ALPHA_REDIS_CLUSTER=true`), plus:
- `FAULT_SERVICE`, `FAULT_TOPIC`, `FAULT_GROUP`: what it is called and consumes;
- `FAULT_LEDGER_DIR`: the ledger (one line per completed event) and the process's counters,
  written as `_service_kit` describes, so a SIGKILL keeps every effect and the suite can report
  duplicates prevented;
- `FAULT_CONCURRENCY` (default 1) and `FAULT_IO_S` (default 0): handlers at once, in key order,
  and how long each awaits simulated I/O before its effect.

An order's payload may ask for trouble: `slow_s` sleeps before the effect (a handler slower than
`max_poll_interval`), `fail_first` raises a transient error on the first attempt in a process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from alpha_streaming import Settings, StreamServiceBuilder, TransientError, redis_client
from middlewares import CurrentBrokerContext, CurrentEnvelope
from tests.fault._service_kit import Ledger, ProcessFigures


class FaultOrder(BaseModel):
    seq: int
    slow_s: float = 0.0
    fail_first: bool = False


settings = Settings()
ledger_dir = Path(os.environ["FAULT_LEDGER_DIR"])
ledger = Ledger(ledger_dir)
figures = ProcessFigures(ledger_dir)
failed_once: set[str] = set()
concurrency = int(os.environ.get("FAULT_CONCURRENCY", "1"))
io_s = float(os.environ.get("FAULT_IO_S", "0"))


async def handle(order: FaultOrder, envelope: CurrentEnvelope, ctx: CurrentBrokerContext) -> None:
    if order.fail_first and envelope.id not in failed_once:
        failed_once.add(envelope.id)
        raise TransientError(f"order {order.seq}: first attempt fails on purpose")
    if order.slow_s or io_s:
        await asyncio.sleep(order.slow_s or io_s)
    ledger.record(envelope.id, ctx.partition, ctx.offset)


service = (
    StreamServiceBuilder(os.environ["FAULT_SERVICE"], settings.redpanda, settings)
    .with_redis(redis_client(settings))
    .with_error_handling()
    .with_metrics(meter_provider=figures.meter_provider)
    .add_consumer_handler(
        topics=[os.environ["FAULT_TOPIC"]],
        group_id=os.environ["FAULT_GROUP"],
        handler_func=handle,
        concurrency=concurrency,
    )
    .build()
)
app = service.app
figures.attach(app)
