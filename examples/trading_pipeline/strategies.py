"""Trading strategies: pure rules from a tick to the signals it triggers (no I/O).

Each strategy trades in one broker namespace: `momentum` on `paper`, `mean_reversion` on
`zerodha`. Every tick yields one signal per strategy, so the demo can check that nothing
went missing between the feed and the strategy runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from examples.trading_pipeline.models import Side, Signal, Tick

__all__ = ("MeanReversion", "Momentum", "Strategy", "StrategyBook")


@dataclass(slots=True)
class Momentum:
    """Buy when the price rose since the last tick of the same token, sell when it fell."""

    name: str = "momentum"
    broker: str = "paper"
    quantity: Decimal = Decimal(10)
    _last: dict[str, Decimal] = field(default_factory=dict)

    def on_tick(self, tick: Tick) -> Signal:
        previous = self._last.get(tick.token, tick.price)
        self._last[tick.token] = tick.price
        side = Side.BUY if tick.price >= previous else Side.SELL
        return Signal(
            strategy=self.name, token=tick.token, side=side, quantity=self.quantity, limit_price=tick.price
        )


@dataclass(slots=True)
class MeanReversion:
    """Bet on a return to the session's first price; size grows with the tick number.

    The growing size is what makes some of its orders break the zerodha notional limit, so
    the rejected path carries traffic too.
    """

    name: str = "mean_reversion"
    broker: str = "zerodha"
    _anchor: dict[str, Decimal] = field(default_factory=dict)

    def on_tick(self, tick: Tick) -> Signal:
        anchor = self._anchor.setdefault(tick.token, tick.price)
        side = Side.BUY if tick.price < anchor else Side.SELL
        quantity = Decimal(1 + (tick.seq % 7) * 4)
        return Signal(
            strategy=self.name, token=tick.token, side=side, quantity=quantity, limit_price=tick.price
        )


Strategy = Momentum | MeanReversion


@dataclass(slots=True)
class StrategyBook:
    """The strategies the runner drives, each with the broker namespace it trades in."""

    strategies: tuple[Strategy, ...] = field(default_factory=lambda: (Momentum(), MeanReversion()))

    def on_tick(self, tick: Tick) -> list[tuple[str, Signal]]:
        """`(broker, signal)` for every strategy."""
        return [(strategy.broker, strategy.on_tick(tick)) for strategy in self.strategies]
