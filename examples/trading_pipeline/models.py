"""The pipeline's event payloads: ticks, signals and fills, with `Decimal` prices.

They travel inside an `EventEnvelope` (`data`); the envelope's `type` names the model.
Prices and quantities are `Decimal` and cross the wire as strings, so nothing is rounded.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = (
    "EventType",
    "OrderFilled",
    "Side",
    "Signal",
    "SignalRejected",
    "Tick",
    "partition_key",
)


class EventType(StrEnum):
    """The envelope `type` of each event the pipeline publishes."""

    TICK = "market.tick"
    SIGNAL = "signal.raw"
    SIGNAL_VALIDATED = "signal.validated"
    SIGNAL_REJECTED = "signal.rejected"
    ORDER_FILLED = "order.filled"


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tick(_Event):
    """A last-traded price of one instrument, published by the market feed on `market.ticks`."""

    token: str = Field(min_length=1)
    price: Decimal = Field(gt=0)
    seq: int = Field(ge=0)
    """Position of the tick in its feed session (per token), so strategies can see gaps."""
    session: str = Field(min_length=1)
    """The feed session (the demo's run id): a strategy trades only the session it runs for."""


class Signal(_Event):
    """A strategy's wish to trade, on `{broker}.signals.raw` and `.validated` once risk agrees."""

    strategy: str = Field(min_length=1)
    token: str = Field(min_length=1)
    side: Side
    quantity: Decimal = Field(gt=0)
    limit_price: Decimal = Field(gt=0)

    @property
    def key(self) -> str:
        return partition_key(self.strategy, self.token)

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.limit_price


class SignalRejected(_Event):
    """A signal the risk manager refused, with the rule that refused it."""

    signal: Signal
    reason: str


class OrderFilled(_Event):
    """A trading engine's fill of a validated signal, on `{broker}.orders.filled`."""

    order_id: str
    strategy: str
    token: str
    side: Side
    quantity: Decimal = Field(gt=0)
    fill_price: Decimal = Field(gt=0)
    venue: str
    filled_at: datetime


def partition_key(strategy: str, token: str) -> str:
    """`strategy:token`: one strategy's signals on one instrument stay in order on one partition."""
    return f"{strategy}:{token}"
