"""Stage 1 of the consume -> produce scenario: `faststream run tests.fault.pipeline_stage1:app`.

A decorator-style FastStream app on the enhanced tier, wired the way a user does it: one
`EnhancedTier(SERVICE, settings=..., redis=...)` (dedup on), then the two lines
`broker = tier.broker(...)` (subscribers `AckPolicy.MANUAL` by default) and `tier.install(app)`
(ack policies checked and the revoke listener given to every subscriber at startup, pending
commits drained before the broker stops, the tier closed after). Its handler consumes
`FAULT_TOPIC` in `FAULT_GROUP` and RETURNS one child per input through
`@broker.publisher(FAULT_OUTPUT_TOPIC)`; the child's data carries the input's `seq` (the
envelope's `causation_id`, the input's id, is filled in by the tier).

Ledger (`FAULT_LEDGER_DIR`): one line per handler run, `input_id partition offset pid time`,
written when the handler runs, before its output exists, so a repeated line is a re-run.
Configuration otherwise as `ledger_service` (`KAFKA_BOOTSTRAP_SERVERS`, `REDIS_URL`, `ALPHA_*`).
"""

from __future__ import annotations

import os
from pathlib import Path

from faststream import FastStream
from faststream.kafka import KafkaResponse, Topic
from pydantic import BaseModel
from redis.asyncio import Redis

from alpha_streaming import Settings
from middlewares import CurrentBrokerContext, CurrentEnvelope, EnhancedTier
from tests.fault._service_kit import Ledger, ProcessFigures

SERVICE = os.environ["FAULT_SERVICE"]
INPUT = os.environ["FAULT_TOPIC"]
OUTPUT = os.environ["FAULT_OUTPUT_TOPIC"]


class FaultOrder(BaseModel):
    seq: int


class FaultChild(BaseModel):
    """The output of one order: which input it came from."""

    seq: int


settings = Settings()
ledger_dir = Path(os.environ["FAULT_LEDGER_DIR"])
ledger = Ledger(ledger_dir)
figures = ProcessFigures(ledger_dir)
redis = Redis.from_url(settings.redis_url)
# Retry policy, dedup settings and commit window from `settings`; counters into the figures.
# `FAULT_GUARANTEE=exactly_once`: Kafka transactions instead of dedup (README, "Exactly-once").
GUARANTEE = os.environ.get("FAULT_GUARANTEE", "at_least_once")
tier = EnhancedTier(
    SERVICE,
    settings=settings,
    redis=redis if GUARANTEE == "at_least_once" else None,
    meter_provider=figures.meter_provider,
    processing_guarantee=GUARANTEE,
)
# `FAULT_TXN_TIMEOUT_MS`: the producer's transaction_timeout_ms (exactly-once), e.g. below the
# session timeout, so a frozen zombie's open transaction is aborted before its partitions move.
TXN_TIMEOUT_MS = os.environ.get("FAULT_TXN_TIMEOUT_MS")
broker = tier.broker(
    settings.redpanda, **({"transaction_timeout_ms": int(TXN_TIMEOUT_MS)} if TXN_TIMEOUT_MS else {})
)
app = tier.install(FastStream(broker))
figures.attach(app)
poll = settings.consumer


@broker.subscriber(
    Topic(INPUT, declare=False),
    group_id=settings.redpanda.group_id(os.environ["FAULT_GROUP"]),
    auto_offset_reset="earliest",
    max_poll_interval_ms=poll.max_poll_interval_ms,
    session_timeout_ms=poll.session_timeout_ms,
    heartbeat_interval_ms=poll.heartbeat_interval_ms,
)
@broker.publisher(OUTPUT)
async def relay(order: FaultOrder, envelope: CurrentEnvelope, where: CurrentBrokerContext) -> KafkaResponse:
    """One child per order, keyed like the order; published as a child event of the order."""
    ledger.record(envelope.id, where.partition, where.offset)
    return KafkaResponse(FaultChild(seq=order.seq), key=(envelope.key or "").encode())


@app.after_shutdown
async def release() -> None:
    """The tier does not own the Redis client it was given."""
    await redis.aclose()
