"""The trading pipeline's services together in memory, with `alpha_streaming.testing`.

One tick flows market.ticks -> strategy-runner -> risk-manager -> the paper and zerodha engines,
through every service's enhanced tier, in one process and a few milliseconds: the zerodha venue's
two timeouts are retried (the backoff recorded, not waited), an unknown instrument is
dead-lettered. The real run is the demo (tests/integration/test_examples.py).
"""

from __future__ import annotations

from decimal import Decimal

from fakeredis import FakeAsyncRedis

from alpha_streaming import Settings, StreamService, TopicMap
from alpha_streaming.testing import TestStreamService
from examples.trading_pipeline.models import OrderFilled, Tick
from examples.trading_pipeline.services import InstrumentMaster, build_pipeline
from examples.trading_pipeline.topology import TICKS

SESSION = "unit"
PAPER, ZERODHA = TopicMap("paper"), TopicMap("zerodha")


async def pipeline_with(*tokens: str) -> tuple[list[StreamService], FakeAsyncRedis]:
    redis = FakeAsyncRedis()
    instruments = InstrumentMaster(redis, "instruments")
    for token in tokens:
        await instruments.add(token)
    built = build_pipeline(Settings(), redis, session=SESSION, instruments=instruments)
    return built.all, redis


async def test_a_tick_becomes_one_fill_per_namespace_and_the_flaky_venue_is_retried() -> None:
    services, redis = await pipeline_with("INFY")
    tick = Tick(token="INFY", price=Decimal(1500), seq=0, session=SESSION)
    async with TestStreamService(*services) as t:
        delivery = await t.publish(TICKS, tick, key="INFY")
        [paper_fill] = t.published(PAPER.orders_filled)
        [zerodha_fill] = t.published(ZERODHA.orders_filled)
        [zerodha_signal] = t.published(ZERODHA.signals_validated)
        delays = t.retry_delays
    assert delivery.status == "processed"
    assert OrderFilled.model_validate(paper_fill.data).venue == "paper-sim"
    assert OrderFilled.model_validate(zerodha_fill.data).venue == "zerodha-kite-sim"
    assert zerodha_fill.causation_id == zerodha_signal.id
    assert delivery.envelope is not None
    assert zerodha_fill.correlation_id == delivery.envelope.correlation_id
    assert len(delays) == 2, "two venue timeouts, each retried after a recorded backoff"
    await redis.aclose()


async def test_signals_for_an_unknown_instrument_are_dead_lettered() -> None:
    services, redis = await pipeline_with("INFY")
    async with TestStreamService(*services) as t:
        await t.publish(TICKS, Tick(token="TCS", price=Decimal(3500), seq=0, session=SESSION), key="TCS")
        letters = t.dead_letters(PAPER.signals_raw) + t.dead_letters(ZERODHA.signals_raw)
        assert t.published(PAPER.orders_filled) == []
    assert [letter.dead_letter.exception_fqcn for letter in letters] == [
        "examples.trading_pipeline.risk.UnknownInstrumentError"
    ] * 2
    await redis.aclose()
