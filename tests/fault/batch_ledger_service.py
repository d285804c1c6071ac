"""The batch form of the ledger service: `faststream run tests.fault.batch_ledger_service:app`.

A decorator app on the enhanced tier (dedup, error routing, metrics) with one batch subscriber of
up to `FAULT_BATCH` records (default 50); otherwise configured like `ledger_service`. Each
event's effect is one ledger line, written as the batch handler reaches it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from faststream import FastStream
from faststream.message import StreamMessage

from alpha_streaming import EnvelopeHeaders, Settings, redis_client
from middlewares import CurrentEnvelopes, EnhancedTier
from middlewares._loop_context import LoopContext
from tests.fault._service_kit import Ledger, ProcessFigures
from tests.fault.ledger_service import FaultOrder

# The batch's records (their partitions and offsets), read on the loop.
Message = Annotated[StreamMessage[Any], LoopContext("message")]

settings = Settings()
ledger_dir = Path(os.environ["FAULT_LEDGER_DIR"])
ledger = Ledger(ledger_dir)
figures = ProcessFigures(ledger_dir)
tier = EnhancedTier(
    os.environ["FAULT_SERVICE"],
    settings=settings,
    redis=redis_client(settings),
    meter_provider=figures.meter_provider,
)
broker = tier.broker(settings.redpanda)


@broker.subscriber(
    os.environ["FAULT_TOPIC"],
    group_id=os.environ["FAULT_GROUP"],
    batch=True,
    max_records=int(os.environ.get("FAULT_BATCH", "50")),
    auto_offset_reset="earliest",
)
async def handle(orders: list[FaultOrder], envelopes: CurrentEnvelopes, message: Message) -> None:
    # Dedup hands the handler only the batch's new events: find each one's record by its id.
    records = {dict(r.headers)[EnvelopeHeaders.ID].decode(): r for r in message.raw_message}
    for envelope in envelopes:
        record = records[envelope.id]
        ledger.record(envelope.id, record.partition, record.offset)


app = tier.install(FastStream(broker))
figures.attach(app)
