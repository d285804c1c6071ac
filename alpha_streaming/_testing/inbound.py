"""The record `TestStreamService.publish` delivers: what the project's producer would have written.

Its value and headers come from `RedpandaProducer`'s own encoder (`encode_record`): an envelope's
JSON with its identity headers mirrored, or bytes untouched. Its offset counts from 0 per topic
partition, as on a fresh topic, so a scenario replayed on a real one gets the same offsets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from alpha_streaming._clients.producer import encode_key, encode_record
from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._topics import broker_from_topic

__all__ = ("SOURCE", "Inbound", "encode")

SOURCE = "alpha-streaming.testing"
"""The `source` of the envelopes `publish` builds."""

WireHeaders = list[tuple[str, bytes]]


class Inbound:
    """Numbers the records the kit hands to subscribers: offsets from 0 per topic partition."""

    def __init__(self) -> None:
        self._offsets: dict[tuple[str, int], int] = {}

    def fields(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> dict[str, Any]:
        """The next record's `ConsumerRecord` fields, headers aside (each copy needs its own list)."""
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[topic, partition] = offset + 1
        return {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": time.time_ns() // 1_000_000,
            "timestamp_type": 0,  # CreateTime
            "key": key,
            "value": value,
            "checksum": None,
            "serialized_key_size": len(key) if key is not None else -1,
            "serialized_value_size": len(value) if value is not None else -1,
        }


def encode(
    topic: str,
    data: Any,
    *,
    key: str | bytes | None,
    event_id: str | None,
    event_type: str | None,
    headers: Mapping[str, str | bytes] | None,
) -> tuple[bytes | None, WireHeaders, bytes | None]:
    """Value, headers and key of the record `publish` delivers for `data`."""
    if isinstance(data, bytes | bytearray | EventEnvelope):
        if event_id is not None or event_type is not None:
            raise TypeError(
                "event_id and event_type describe a new envelope; bytes or envelopes go as they are"
            )
        value: bytes | EventEnvelope = data if isinstance(data, EventEnvelope) else bytes(data)
    else:
        value = EventEnvelope.create(
            id=event_id,
            type=event_type or (type(data).__name__ if isinstance(data, BaseModel) else topic),
            data=data,
            source=SOURCE,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            broker=broker_from_topic(topic),
        )
    body, wire_headers = encode_record(value, headers)
    if key is None and isinstance(value, EventEnvelope) and value.key is not None:
        key = value.key
    return body, wire_headers, encode_key(key)
