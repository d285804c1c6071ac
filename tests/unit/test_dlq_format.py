"""DLQ headers use Spring's vocabulary and encodings and round-trip exactly."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from alpha_streaming._dlq import DeadLetter, DlqHeaders, strip_dlq_headers


def letter(**overrides: object) -> DeadLetter:
    fields: dict[str, object] = {
        "original_topic": "paper.orders.filled",
        "original_partition": 3,
        "original_offset": 2**40 + 7,
        "original_timestamp_ms": 1_795_000_000_123,
        "consumer_group": "engine.orders",
        "exception_fqcn": "pydantic_core._pydantic_core.ValidationError",
        "exception_message": "1 validation error for OrderFilled",
        "stacktrace": "Traceback ...",
        "attempts": 1,
        "service": "trading-engine",
        "failed_at": datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
    }
    fields.update(overrides)
    return DeadLetter(**fields)  # type: ignore[arg-type]


def test_numbers_use_spring_binary_encoding() -> None:
    headers = dict(letter().headers())
    assert headers[DlqHeaders.ORIGINAL_PARTITION] == struct.pack(">i", 3)
    assert headers[DlqHeaders.ORIGINAL_OFFSET] == struct.pack(">q", 2**40 + 7)
    assert headers[DlqHeaders.ORIGINAL_TIMESTAMP] == struct.pack(">q", 1_795_000_000_123)
    assert headers[DlqHeaders.ORIGINAL_TOPIC] == b"paper.orders.filled"
    assert headers[DlqHeaders.ORIGINAL_CONSUMER_GROUP] == b"engine.orders"


def test_round_trip_among_original_headers() -> None:
    original = [("x-event-id", b"abc"), ("content-type", b"application/json")]
    dead = letter()
    headers = original + dead.headers()
    assert DeadLetter.from_headers(headers) == dead
    assert strip_dlq_headers(headers) == original


def test_long_texts_are_clipped() -> None:
    headers = dict(letter(exception_message="m" * 100_000, stacktrace="s" * 100_000).headers())
    assert len(headers[DlqHeaders.EXCEPTION_MESSAGE]) == 4_096
    assert len(headers[DlqHeaders.EXCEPTION_STACKTRACE]) == 16_384


def test_record_without_dlq_headers_is_reported() -> None:
    with pytest.raises(ValueError, match="not a dead-letter record"):
        DeadLetter.from_headers([("content-type", b"application/json")])
