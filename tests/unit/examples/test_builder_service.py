"""`examples.builder_service` in memory, with `alpha_streaming.testing`: its legacy handler, producer
and dedup, as `build_service` wires them. Its real run is tests/integration/test_examples.py.
"""

from __future__ import annotations

from decimal import Decimal

from redis.asyncio import Redis

from alpha_streaming import EventEnvelope, Settings, TopicMap, child_id
from alpha_streaming.testing import TestStreamService
from examples.builder_service import build_service
from examples.trading_pipeline.models import Side, Signal

TOPICS = TopicMap("paper")


def signal(quantity: int) -> EventEnvelope:
    raw = Signal(
        strategy="momentum", token="INFY", side=Side.BUY, quantity=quantity, limit_price=Decimal(1500)
    )
    return EventEnvelope.create(
        type="signal.raw", data=raw, source="strategy-runner", key=raw.key, broker="paper"
    )


async def test_a_signal_within_the_limit_is_republished_as_a_validated_child() -> None:
    accepted = signal(10)
    async with TestStreamService(build_service(Settings(), Redis(), "paper")) as t:
        delivery = await t.publish(TOPICS.signals_raw, accepted)
        [validated] = t.published(TOPICS.signals_validated)
        [record] = t.records(TOPICS.signals_validated)
    assert (delivery.status, delivery.attempts) == ("processed", 1)
    assert validated.id == str(child_id(accepted.id, TOPICS.signals_validated, 0))
    assert (validated.causation_id, validated.correlation_id) == (accepted.id, accepted.correlation_id)
    assert (validated.data, record.key) == (accepted.data, b"momentum:INFY")


async def test_a_signal_over_the_limit_is_processed_without_output() -> None:
    async with TestStreamService(build_service(Settings(), Redis(), "paper")) as t:
        delivery = await t.publish(TOPICS.signals_raw, signal(1000))
        assert t.published(TOPICS.signals_validated) == []
    assert delivery.status == "processed"


async def test_a_redelivered_signal_is_validated_once() -> None:
    accepted = signal(10)
    async with TestStreamService(build_service(Settings(), Redis(), "paper")) as t:
        await t.publish(TOPICS.signals_raw, accepted)
        again = await t.publish(TOPICS.signals_raw, accepted)
        assert len(t.published(TOPICS.signals_validated)) == 1
    assert again.status == "deduplicated"
