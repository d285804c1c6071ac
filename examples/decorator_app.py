"""Decorator-style FastStream subscribers on the enhanced tier.

    faststream run examples.decorator_app:app          # against the local stack
    faststream docs gen examples.decorator_app:app     # AsyncAPI, with the envelope schema

A position keeper: it consumes `{broker}.orders.filled` and publishes the updated position to
`{broker}.positions.updated`. The broker carries the enhanced stack (metrics, error routing,
envelope, dedup), so the handler sees the `OrderFilled` payload; a duplicate fill is
suppressed, undecodable bytes go to `{broker}.orders.filled.dlq`, and the returned position is
published as a child event of the fill (same correlation id, causation = the fill's id).

`EXAMPLE_BROKER` picks the broker namespace (default `paper`); the tests set their own.
"""

from __future__ import annotations

import os
from decimal import Decimal

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaResponse, Topic
from faststream.specification import AsyncAPI
from pydantic import BaseModel
from redis.asyncio import Redis

from alpha_streaming import EventEnvelope, Settings, TopicMap
from alpha_streaming.admin import broker_admin, connected_broker, ensure_topics
from alpha_streaming.broker import make_broker
from alpha_streaming.topic_selection import bootstrap_specs
from examples.trading_pipeline.models import OrderFilled, Side
from middlewares import (
    CurrentBrokerContext,
    CurrentEnvelope,
    close_stack,
    drain_stack,
    enhanced_stack,
    revoke_listener,
)

__all__ = ("FILLS", "POSITIONS", "PositionUpdated", "app", "broker", "positions")

SERVICE = "position-keeper"
settings = Settings()
topics = TopicMap(os.environ.get("EXAMPLE_BROKER", "paper"))
FILLS = topics.orders_filled
POSITIONS = topics.topic("positions", "updated")

redis = Redis.from_url(settings.redis_url)
broker = make_broker(
    settings.redpanda,
    middlewares=enhanced_stack(service=SERVICE, redis=redis, dedup=settings.dedup),
    ack_policy=AckPolicy.MANUAL,  # error routing commits each offset once the outcome is known
)
app = FastStream(
    broker,
    specification=AsyncAPI(
        title="position-keeper", description="Positions from order fills (alpha-streaming)"
    ),
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
    ack_policy=AckPolicy.MANUAL,
    # With dedup, commits are coalesced (100 outcomes / 0.5 s): commit them when a rebalance
    # takes partitions away, so the new owner does not re-read what is already done.
    listener=revoke_listener(broker),
)
@broker.publisher(POSITIONS, schema=EventEnvelope, title=f"{POSITIONS}:{SERVICE}")
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
        replication_factor=1,
        retention_ms=None,
        dlq_retention_ms=None,
        with_dlq=True,
    )
    async with connected_broker(settings.redpanda) as admin:
        await ensure_topics(broker_admin(admin), specs)


@app.on_shutdown
async def commit_pending() -> None:
    """Before the consumers stop: commit coalesced offsets while this member is still in its group."""
    await drain_stack(broker.middlewares)


@app.after_shutdown
async def release() -> None:
    """After the broker stopped: close the stack's dead-letter producer, then Redis."""
    await close_stack(broker.middlewares)
    await redis.aclose()
