"""The market feed: publishes ticks as root events, plus the demo's injected faults.

It sends through the direct tier (`RedpandaProducer` sharing the feed service's broker), which
sends an `EventEnvelope` exactly as built: that is how a duplicate (the same envelope, same id,
twice) and a poison record (bytes that are no envelope) get onto `market.ticks`.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from decimal import Decimal

from alpha_streaming import EventEnvelope, RedpandaProducer
from examples.trading_pipeline.models import EventType, Tick
from examples.trading_pipeline.report import RUN_HEADER
from examples.trading_pipeline.topology import TICKS

__all__ = ("BASE_PRICES", "SOURCE", "UNLISTED_TOKEN", "FeedPlan", "MarketFeed")

SOURCE = "market-feed"
BASE_PRICES: dict[str, Decimal] = {
    "INFY": Decimal("1523.40"),
    "TCS": Decimal("3511.05"),
    "RELIANCE": Decimal("2476.90"),
    "HDFCBANK": Decimal("1602.15"),
    "SBIN": Decimal("812.60"),
}
# Listed on the exchange today but missing from the instrument master: its signals are
# dead-lettered until the demo adds it, then replayed from the DLQ.
UNLISTED_TOKEN = "NEWCO"
UNLISTED_PRICE = Decimal("211.35")
POISON = b"\x00\x9f{not json: a feed handler wrote garbage"
TICK_SIZE = Decimal("0.05")


@dataclass(frozen=True, slots=True)
class FeedPlan:
    """How many ticks per second, for how long, and which faults to inject."""

    rate_per_s: float = 10.0
    duration_s: float = 20.0
    duplicate_every: int = 25
    """Every n-th tick is published twice (the same envelope): the dedup must suppress it."""
    poison: bool = True
    unlisted: bool = True


@dataclass(slots=True)
class MarketFeed:
    producer: RedpandaProducer
    session: str
    plan: FeedPlan = field(default_factory=FeedPlan)
    _prices: dict[str, Decimal] = field(default_factory=lambda: dict(BASE_PRICES))
    _seq: dict[str, int] = field(default_factory=dict)

    def _next_tick(self, rng: random.Random, token: str) -> Tick:
        move = TICK_SIZE * rng.randint(-40, 40)
        price = max(TICK_SIZE, self._prices[token] + move)
        self._prices[token] = price
        seq = self._seq.get(token, 0)
        self._seq[token] = seq + 1
        return Tick(token=token, price=price, seq=seq, session=self.session)

    async def _publish(self, tick: Tick, copies: int = 1) -> None:
        envelope = EventEnvelope.create(
            type=EventType.TICK, data=tick, source=SOURCE, key=tick.token, broker="shared"
        )
        for _ in range(copies):
            # Keyed by token: one instrument's ticks stay in order on one partition.
            await self.producer.send(topic=TICKS, key=tick.token, value=envelope)

    async def run(self) -> None:
        """Publish for `plan.duration_s` at `plan.rate_per_s`; faults go in mid-way."""
        plan = self.plan
        rng = random.Random(self.session)
        tokens = list(BASE_PRICES)
        total = max(1, int(plan.rate_per_s * plan.duration_s))
        interval = 1.0 / plan.rate_per_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(total):
            copies = 2 if plan.duplicate_every and n % plan.duplicate_every == plan.duplicate_every - 1 else 1
            await self._publish(self._next_tick(rng, tokens[n % len(tokens)]), copies)
            if n == total // 2:
                await self._inject_faults()
            # Pace by the schedule, not by sleeping a fixed time after each send.
            delay = started + (n + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _inject_faults(self) -> None:
        if self.plan.poison:
            await self.producer.send(
                topic=TICKS, key=b"garbage", value=POISON, headers={RUN_HEADER: self.session}
            )
        if self.plan.unlisted:
            tick = Tick(token=UNLISTED_TOKEN, price=UNLISTED_PRICE, seq=0, session=self.session)
            await self._publish(tick)
