"""Decorator-style FastStream subscribers on the enhanced tier.

    faststream run examples.decorator_app:app          # against the local stack
    faststream docs gen examples.decorator_app:app     # AsyncAPI: envelopes, x-event-* headers, .dlq

A position keeper: it consumes `{broker}.orders.filled` and publishes the updated position to
`{broker}.positions.updated`. Two lines wire the enhanced tier (metrics, error routing, envelope,
dedup, outputs): `tier.broker(...)` builds the broker, `tier.install(app)` ties the rest to the
app. The handler sees the `OrderFilled` payload; a duplicate fill is suppressed, undecodable bytes
go to `{broker}.orders.filled.dlq`, and the returned position is published as a child event of the
fill (same correlation id, causation = the fill's id) and acknowledged by Kafka before the fill
is marked done and committed.

`EXAMPLE_BROKER` picks the broker namespace (default `paper`); the tests set their own.
"""

from __future__ import annotations

import os
from decimal import Decimal

from faststream import FastStream
from faststream.kafka import KafkaResponse, Topic
from pydantic import BaseModel
from redis.asyncio import Redis

from alpha_streaming import (
    EnvelopeAsyncAPI,
    Settings,
    TopicMap,
    bootstrap_specs,
    broker_admin,
    configure_logging,
    connected_broker,
    ensure_topics,
)
from examples.trading_pipeline.models import OrderFilled, Side
from middlewares import CurrentBrokerContext, CurrentEnvelope, EnhancedTier

__all__ = ("FILLS", "POSITIONS", "PositionUpdated", "app", "broker", "positions")

SERVICE = "position-keeper"
settings = Settings()
configure_logging(settings.log)  # time, level, logger and message ids on every line; ALPHA_LOG__FORMAT=json
topics = TopicMap(os.environ.get("EXAMPLE_BROKER", "paper"))
FILLS = topics.orders_filled
POSITIONS = topics.topic("positions", "updated")

redis = Redis.from_url(settings.redis_url)
tier = EnhancedTier(SERVICE, settings=settings, redis=redis)
broker = tier.broker()
app = tier.install(
    FastStream(
        broker,
        specification=EnvelopeAsyncAPI(
            title="position-keeper", description="Positions from order fills (alpha-streaming)"
        ),
    )
)


class PositionUpdated(BaseModel):
    strategy: str
    token: str
    quantity: Decimal
    """Signed net quantity: positive long, negative short."""


positions: dict[tuple[str, str], Decimal] = {}


@broker.subscriber(
    Topic(FILLS, declare=False),
    group_id=settings.redpanda.group_id("position-keeper.fills"),
    auto_offset_reset="earliest",
)
@broker.publisher(POSITIONS, schema=PositionUpdated, title=f"{POSITIONS}:{SERVICE}")
async def on_fill(fill: OrderFilled, envelope: CurrentEnvelope, where: CurrentBrokerContext) -> KafkaResponse:
    """Apply a fill to the strategy's position; the return value is published as a child event."""
    signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
    key = (fill.strategy, fill.token)
    positions[key] = positions.get(key, Decimal(0)) + signed
    print(
        f"{where.topic}@{where.offset} {envelope.id} {fill.strategy}:{fill.token} -> {positions[key]}",
        flush=True,
    )
    update = PositionUpdated(strategy=fill.strategy, token=fill.token, quantity=positions[key])
    # Keyed `strategy:token`, like the fills: one position's updates stay in order.
    return KafkaResponse(update, key=f"{fill.strategy}:{fill.token}".encode())


@app.on_startup
async def create_topics() -> None:
    """Topic auto-creation is off: make sure both topics and their `.dlq` twins exist."""
    specs = bootstrap_specs(
        [FILLS, POSITIONS],
        partitions=3,
        replication_factor=None,  # the cluster's default.replication.factor
        retention_ms=None,
        dlq_retention_ms=None,
        with_dlq=True,
    )
    async with connected_broker(settings.redpanda) as admin:
        await ensure_topics(broker_admin(admin), specs)


@app.after_shutdown
async def close_redis() -> None:
    """After the tier released what it holds: the Redis client this module opened."""
    await redis.aclose()
