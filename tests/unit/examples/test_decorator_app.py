"""`examples.decorator_app` in memory, with `alpha_streaming.testing`: the app as `faststream run` loads it.

Its real run (Kafka, Redis, `faststream run`) is tests/integration/test_examples.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal

import pytest

from alpha_streaming import EventEnvelope, child_id
from alpha_streaming.testing import TestStreamService
from examples import decorator_app
from examples.decorator_app import FILLS, POSITIONS, PositionUpdated, app, positions
from examples.trading_pipeline.models import OrderFilled, Side

SERVICE = "position-keeper"


def fill(quantity: str, side: Side = Side.BUY, strategy: str = "momentum") -> EventEnvelope:
    order = OrderFilled(
        order_id="ord-1",
        strategy=strategy,
        token="INFY",
        side=side,
        quantity=Decimal(quantity),
        fill_price=Decimal("1523.45"),
        venue="paper-sim",
        filled_at="2025-01-02T09:15:00Z",  # type: ignore[arg-type]
    )
    return EventEnvelope.create(
        type="order.filled", data=order, source="paper-engine", key=f"{strategy}:INFY", broker="paper"
    )


@pytest.fixture(autouse=True)
def no_positions() -> Iterator[None]:
    positions.clear()
    yield
    positions.clear()


async def test_a_fill_updates_the_position_and_publishes_it_as_a_child_event() -> None:
    buy, sell = fill("10"), fill("4", Side.SELL)
    async with TestStreamService(app) as t:
        first = await t.publish(FILLS, buy)
        second = await t.publish(FILLS, sell)
        updates = t.published(POSITIONS)
        keys = [record.key for record in t.records(POSITIONS)]
    assert (first.status, second.status) == ("processed", "processed")
    assert [PositionUpdated.model_validate(u.data).quantity for u in updates] == [Decimal(10), Decimal(6)]
    assert [u.id for u in updates] == [
        str(child_id(buy.id, POSITIONS, 0)),
        str(child_id(sell.id, POSITIONS, 0)),
    ]
    assert [(u.causation_id, u.correlation_id, u.source) for u in updates] == [
        (buy.id, buy.correlation_id, SERVICE),
        (sell.id, sell.correlation_id, SERVICE),
    ]
    assert keys == [b"momentum:INFY", b"momentum:INFY"]


async def test_a_duplicate_fill_is_applied_once() -> None:
    buy = fill("10")
    async with TestStreamService(app) as t:
        await t.publish(FILLS, buy)
        again = await t.publish(FILLS, buy)
        assert len(t.published(POSITIONS)) == 1
    assert again.status == "deduplicated"
    assert positions == {("momentum", "INFY"): Decimal(10)}


async def test_undecodable_bytes_go_to_the_dead_letter_topic_untouched() -> None:
    async with TestStreamService(app) as t:
        delivery = await t.publish(FILLS, b"\xff\x00 not a fill", key="momentum:INFY")
        [letter] = t.dead_letters(FILLS)
    assert (delivery.status, delivery.attempts) == ("dead_lettered", 1)
    assert (letter.topic, letter.key, letter.value) == (
        f"{FILLS}.dlq",
        b"momentum:INFY",
        b"\xff\x00 not a fill",
    )
    assert letter.dead_letter.exception_fqcn == "alpha_streaming._errors.EnvelopeError"
    assert letter.dead_letter.service == SERVICE
    assert positions == {}


async def test_a_fill_that_is_no_order_filled_is_dead_lettered_at_once() -> None:
    async with TestStreamService(app) as t:
        delivery = await t.publish(FILLS, {"order_id": "ord-1"}, key="momentum:INFY")
    assert (delivery.status, delivery.attempts) == ("dead_lettered", 1)
    assert decorator_app.tier.routing.policy.sleep is asyncio.sleep, "the app's own policy is back"
