"""EventEnvelope: ids, lineage, JSON round trip, clear validation errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel

from alpha_streaming import EventEnvelope
from alpha_streaming._envelope import EnvelopeHeaders
from alpha_streaming._errors import EnvelopeError


class OrderFilled(BaseModel):
    order_id: str
    price: Decimal
    filled_at: datetime


def fill() -> OrderFilled:
    return OrderFilled(
        order_id="o-1", price=Decimal("2450.05"), filled_at=datetime(2026, 11, 26, 9, 15, tzinfo=UTC)
    )


def test_root_event_correlates_to_itself() -> None:
    root = EventEnvelope.create(type="order.filled", data=fill(), source="engine", key="s1:256265")
    assert uuid.UUID(root.id).version == 7
    assert root.correlation_id == root.id
    assert root.causation_id is None
    assert root.is_root


def test_child_inherits_correlation_and_points_at_its_cause() -> None:
    root = EventEnvelope.create(type="signal.raw", data={}, source="strategy")
    child = EventEnvelope.create(type="signal.validated", data={}, source="risk", parent=root)
    grandchild = EventEnvelope.create(type="order.filled", data={}, source="engine", parent=child)
    assert child.correlation_id == grandchild.correlation_id == root.id
    assert child.causation_id == root.id
    assert grandchild.causation_id == child.id
    assert len({root.id, child.id, grandchild.id}) == 3


def test_json_round_trip_preserves_payload_types() -> None:
    envelope = EventEnvelope.create(type="order.filled", data=fill(), source="engine", broker="paper")
    back = EventEnvelope.from_bytes(envelope.to_bytes())
    assert back == envelope
    assert back.ts == envelope.ts
    assert back.ts.tzinfo is not None
    assert OrderFilled.model_validate(back.data) == fill()


def test_headers_mirror_identity_fields() -> None:
    root = EventEnvelope.create(type="a", data={}, source="s", broker="zerodha")
    child = EventEnvelope.create(type="b", data={}, source="s", parent=root)
    assert root.headers() == {
        EnvelopeHeaders.ID: root.id,
        EnvelopeHeaders.TYPE: "a",
        EnvelopeHeaders.SOURCE: "s",
        EnvelopeHeaders.CORRELATION_ID: root.id,
        EnvelopeHeaders.BROKER: "zerodha",
        EnvelopeHeaders.VERSION: "1",
    }
    assert child.headers()[EnvelopeHeaders.CAUSATION_ID] == root.id


def test_naive_timestamp_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        EventEnvelope(type="a", source="s", ts=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b"\xff\x00", "<body>"),
        (b"[1, 2]", "<body>"),
        (b'{"source": "s"}', "type"),
        (b'{"type": "", "source": "s"}', "type"),
        (b'{"type": "t", "source": "s", "data": [1]}', "data"),
        (b'{"type": "t", "source": "s", "ts": "yesterday"}', "ts"),
    ],
)
def test_invalid_bytes_raise_envelope_error_naming_the_field(raw: bytes, names: str) -> None:
    with pytest.raises(EnvelopeError, match="invalid EventEnvelope") as caught:
        EventEnvelope.from_bytes(raw)
    assert names in str(caught.value)


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    envelope = EventEnvelope.create(type="t", data={}, source="s")
    raw = envelope.to_bytes()[:-1] + b',"added_in_v2":true}'
    assert EventEnvelope.from_bytes(raw) == envelope
