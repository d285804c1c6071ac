"""Event ids are real RFC 9562 UUIDs (seed-lessons #6): UUIDv7 roots in time order, UUIDv5 children."""

from __future__ import annotations

import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from alpha_streaming._ids import CHILD_ID_NAMESPACE, child_id, uuid7


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


@given(
    parent=st.uuids().map(str),
    topics=st.lists(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,2}", fullmatch=True), min_size=1, max_size=3),
    ordinals=st.integers(min_value=1, max_value=20),
)
def test_child_ids_are_deterministic_valid_and_distinct_per_parent_topic_ordinal(
    parent: str, topics: list[str], ordinals: int
) -> None:
    keys = [(t, n) for t in dict.fromkeys(topics) for n in range(ordinals)]
    first = [child_id(parent, t, n) for t, n in keys]
    again = [child_id(parent, t, n) for t, n in keys]
    assert first == again, "a re-run must emit the same ids"
    assert len(set(first)) == len(keys), "every (topic, ordinal) of one parent gets its own id"
    for made in first:
        assert made.version == 5
        assert made.variant == uuid.RFC_4122
        assert str(made) != parent


@given(parents=st.lists(st.uuids().map(str), min_size=2, max_size=10, unique=True))
def test_children_of_different_parents_never_share_an_id(parents: list[str]) -> None:
    ids = {child_id(parent, "paper.orders.filled", 0) for parent in parents}
    assert len(ids) == len(parents)


def test_child_id_is_plain_uuid5_any_tool_can_recompute() -> None:
    parent = "0193a3c4-0000-7000-8000-000000000001"
    assert child_id(parent, "paper.positions.updated", 2) == uuid.uuid5(
        CHILD_ID_NAMESPACE, f"{parent}\npaper.positions.updated\n2"
    )
