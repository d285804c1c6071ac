"""How the producer turns values, keys and headers into wire bytes (no broker needed)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel

from alpha_streaming import EventEnvelope
from alpha_streaming import _serialization as serialization
from alpha_streaming._clients.producer import encode_key, encode_record
from alpha_streaming._envelope import EnvelopeHeaders


class Fill(BaseModel):
    qty: int
    px: Decimal


def test_bytes_are_sent_untouched_with_caller_headers_only() -> None:
    assert encode_record(b"\x00\xff") == (b"\x00\xff", [])
    assert encode_record(b"v", {"a": "x", "b": b"\x01"}) == (b"v", [("a", b"x"), ("b", b"\x01")])


def test_mappings_and_models_use_the_one_serialiser_and_are_marked_json() -> None:
    body, headers = encode_record({"px": Decimal("1.10")})
    assert body == serialization.dumps({"px": Decimal("1.10")}) == b'{"px":"1.10"}'
    assert headers == [("content-type", b"application/json")]
    body, _ = encode_record(Fill(qty=2, px=Decimal("3.5")))
    assert body == b'{"qty":2,"px":"3.5"}'


def test_envelope_body_and_identity_headers_win_over_caller_headers() -> None:
    envelope = EventEnvelope.create(type="t", data={"a": 1}, source="svc")
    body, headers = encode_record(envelope, {EnvelopeHeaders.ID: "forged", "traceparent": "00-x"})
    wire = dict(headers)
    assert body == envelope.to_bytes()
    assert wire[EnvelopeHeaders.ID] == envelope.id.encode()
    assert wire["traceparent"] == b"00-x"
    assert wire["content-type"] == b"application/json"
    assert {k: v.encode() for k, v in envelope.headers().items()}.items() <= wire.items()


def test_tombstone_and_unsupported_values() -> None:
    assert encode_record(None) == (None, [])
    with pytest.raises(TypeError, match="got str"):
        encode_record("text")  # type: ignore[arg-type]


def test_keys() -> None:
    assert encode_key("strategy:1") == b"strategy:1"
    assert encode_key(b"k") == b"k"
    assert encode_key(None) is None
    with pytest.raises(TypeError, match="got int"):
        encode_key(7)  # type: ignore[arg-type]
