"""Pre-trade risk rules: instrument reference data and a notional limit per broker namespace."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from alpha_streaming import PermanentError
from examples.trading_pipeline.models import Signal

__all__ = ("NOTIONAL_LIMITS", "Instrument", "RiskDecision", "UnknownInstrumentError", "check_signal")

# Real money (zerodha) gets a much tighter limit than the paper account.
NOTIONAL_LIMITS: dict[str, Decimal] = {"paper": Decimal(1_000_000), "zerodha": Decimal(40_000)}


class UnknownInstrumentError(PermanentError):
    """The token is not in the instrument master; retrying cannot help until someone adds it."""


@dataclass(frozen=True, slots=True)
class Instrument:
    token: str
    lot_size: int


@dataclass(frozen=True, slots=True)
class RiskDecision:
    accepted: bool
    reason: str = ""


def check_signal(signal: Signal, *, broker: str, instrument: Instrument | None) -> RiskDecision:
    """Accept or reject `signal`; raise `UnknownInstrumentError` when there is no reference data."""
    if instrument is None:
        raise UnknownInstrumentError(f"token {signal.token!r} is not in the instrument master")
    if signal.quantity % instrument.lot_size:
        return RiskDecision(
            False, f"quantity {signal.quantity} is not a multiple of lot {instrument.lot_size}"
        )
    limit = NOTIONAL_LIMITS.get(broker)
    if limit is None:
        return RiskDecision(False, f"no risk limits configured for broker {broker!r}")
    if signal.notional > limit:
        return RiskDecision(False, f"notional {signal.notional} exceeds the {broker} limit {limit}")
    return RiskDecision(True)
