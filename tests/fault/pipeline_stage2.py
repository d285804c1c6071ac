"""Stage 2 of the consume -> produce scenario: `faststream run tests.fault.pipeline_stage2:app`.

Built with `StreamServiceBuilder` like `ledger_service` (dedup, error routing, metrics), consuming
stage 1's output topic (`FAULT_TOPIC`) in `FAULT_GROUP`. Its side effect is one ledger line per
child, `child_id partition offset pid time causation_id seq`, appended with one unbuffered write:
which child had an effect, and which input it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel
from redis.asyncio import Redis

from alpha_streaming import Settings, StreamServiceBuilder
from middlewares import CurrentBrokerContext, CurrentEnvelope
from tests.fault._service_kit import Ledger, ProcessFigures


class FaultChild(BaseModel):
    seq: int


settings = Settings()
ledger_dir = Path(os.environ["FAULT_LEDGER_DIR"])
ledger = Ledger(ledger_dir)
figures = ProcessFigures(ledger_dir)


async def handle(child: FaultChild, envelope: CurrentEnvelope, ctx: CurrentBrokerContext) -> None:
    ledger.record(envelope.id, ctx.partition, ctx.offset, envelope.causation_id or "-", child.seq)


service = (
    StreamServiceBuilder(os.environ["FAULT_SERVICE"], settings.redpanda, settings)
    .with_redis(Redis.from_url(settings.redis_url))
    .with_error_handling()
    .with_metrics(meter_provider=figures.meter_provider)
    .add_consumer_handler(
        topics=[os.environ["FAULT_TOPIC"]], group_id=os.environ["FAULT_GROUP"], handler_func=handle
    )
    .build()
)
app = service.app
figures.attach(app)
