"""One serialiser for both tiers (seed-lessons #14): Decimal and datetime survive without loss."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import BaseModel

from alpha_streaming import _serialization as serialization


class Fill(BaseModel):
    price: Decimal
    at: datetime


def test_decimal_is_written_as_exact_string() -> None:
    raw = serialization.dumps({"price": Decimal("101.2500000000000000001")})
    assert raw == b'{"price":"101.2500000000000000001"}'


def test_model_round_trip_keeps_decimal_and_datetime() -> None:
    fill = Fill(price=Decimal("0.1") + Decimal("0.2"), at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    back = Fill.model_validate(serialization.loads(serialization.dumps(fill)))
    assert back == fill
    assert back.price == Decimal("0.3")  # not 0.30000000000000004


def test_offset_datetime_keeps_its_instant() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    at = datetime(2026, 3, 1, 9, 15, tzinfo=ist)
    back = Fill.model_validate(serialization.loads(serialization.dumps({"price": "1", "at": at})))
    assert back.at == at


def test_loads_rejects_non_json() -> None:
    with pytest.raises(ValueError, match="expected value"):
        serialization.loads(b"\xff\xfe not json")
