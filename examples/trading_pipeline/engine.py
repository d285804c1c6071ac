"""Trading engines: turn a validated signal into a fill through a (simulated) venue gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from alpha_streaming import InfrastructureError
from examples.trading_pipeline.models import OrderFilled, Side, Signal

__all__ = ("FlakyGateway", "Gateway", "PaperGateway")

TICK_SIZE = Decimal("0.05")


@dataclass(slots=True)
class PaperGateway:
    """Paper trading: every order fills at its limit price."""

    venue: str = "paper-sim"

    async def execute(self, order_id: str, signal: Signal) -> OrderFilled:
        return _fill(order_id, signal, signal.limit_price, self.venue)


@dataclass(slots=True)
class FlakyGateway:
    """A broker API that times out on its first `failures` calls, then fills with one tick of slippage.

    This is the demo's injected transient failure: the enhanced tier must retry the handler
    (the order fills once, later) instead of dropping or dead-lettering the signal.
    """

    failures: int = 2
    venue: str = "zerodha-kite-sim"
    calls: int = field(default=0, init=False)

    async def execute(self, order_id: str, signal: Signal) -> OrderFilled:
        self.calls += 1
        if self.calls <= self.failures:
            raise InfrastructureError(f"gateway timeout placing {order_id} (call {self.calls})")
        slip = TICK_SIZE if signal.side is Side.BUY else -TICK_SIZE
        return _fill(order_id, signal, signal.limit_price + slip, self.venue)


Gateway = PaperGateway | FlakyGateway


def _fill(order_id: str, signal: Signal, price: Decimal, venue: str) -> OrderFilled:
    return OrderFilled(
        order_id=order_id,
        strategy=signal.strategy,
        token=signal.token,
        side=signal.side,
        quantity=signal.quantity,
        fill_price=price,
        venue=venue,
        filled_at=datetime.now(UTC),
    )
