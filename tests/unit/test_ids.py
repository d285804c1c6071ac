"""UUIDv7 ids are real RFC 9562 UUIDs (seed-lessons #6): version, variant, time order."""

from __future__ import annotations

import time
import uuid

from alpha_streaming.ids import uuid7


def test_version_and_variant_bits() -> None:
    for _ in range(1_000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert (value.int >> 76) & 0xF == 7
        assert (value.int >> 62) & 0b11 == 0b10
        assert uuid.UUID(str(value)) == value  # parses back as a valid UUID string


def test_timestamp_is_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after + 1  # +1: the counter may roll into the next ms


def test_ids_made_in_one_process_strictly_increase() -> None:
    ids = [uuid7() for _ in range(20_000)]  # many per millisecond: exercises the counter
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids), "string order is time order too"
