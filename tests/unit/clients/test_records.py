"""Decoding of consumed records: JSON objects become dicts, everything else stays bytes."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from alpha_streaming._clients import ConsumedRecord, RecordBatch
from alpha_streaming._clients.records import decode_value


def raw(
    value: bytes | None, headers: list[tuple[str, bytes]] | None = None, offset: int = 0
) -> ConsumerRecord:
    return ConsumerRecord("t", 1, offset, 1700000000000, 0, b"k", value, None, 1, 0, headers or [])


def test_only_json_objects_are_decoded() -> None:
    assert decode_value(b'{"a": 1}') == {"a": 1}
    assert decode_value(b' \n {"a": 1}') == {"a": 1}
    for opaque in (b"[1, 2]", b"123", b'"s"', b'{"broken', b"\xff\xfe", b"", b"\x00{}"):
        assert decode_value(opaque) == opaque
    assert decode_value(None) is None


def test_record_exposes_fields_decoded_value_and_headers() -> None:
    record = ConsumedRecord(
        raw(b'{"x": [1]}', [("a", b"text"), ("b", b"\xc3\x28"), ("a", b"last")], offset=9)
    )
    assert (record.topic, record.partition, record.offset, record.key) == ("t", 1, 9, b"k")
    assert record.timestamp_ms == 1700000000000
    assert record.value == {"x": [1]}
    assert record.raw_value == b'{"x": [1]}'
    assert record.headers == {"a": "last", "b": b"\xc3\x28"}
    assert record.raw_headers == (("a", b"text"), ("b", b"\xc3\x28"), ("a", b"last"))
    assert ConsumedRecord(raw(b"\x01binary")).value == b"\x01binary"
    assert ConsumedRecord(raw(None)).value is None


def test_batch_is_a_sequence_of_records_in_order() -> None:
    batch = RecordBatch([raw(b"a", offset=0), raw(b"b", offset=1), raw(b"c", offset=2)])
    assert len(batch) == 3
    assert [r.offset for r in batch] == [0, 1, 2]
    assert batch[-1].value == b"c"
    assert [r.value for r in batch[1:]] == [b"b", b"c"]
