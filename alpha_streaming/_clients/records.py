"""`ConsumedRecord`: what the direct consumer yields, a thin view over aiokafka's record."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, overload

from alpha_streaming import _serialization as serialization

__all__ = ("ConsumedRecord", "RawRecord", "RecordBatch", "decode_header", "decode_value")

_UNSET: Any = object()
_OPEN_BRACE = ord("{")
_JSON_SPACE = frozenset(b" \t\r\n")
_SPACE = ord(" ")


class RawRecord(Protocol):
    """The fields of `aiokafka.ConsumerRecord` this module reads (aiokafka ships no types)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def decode_value(raw: bytes | None) -> dict[str, Any] | bytes | None:
    """A JSON object becomes a dict; anything else (other JSON, binary, broken JSON) stays bytes."""
    if not raw:
        return raw
    # Only a JSON *object* is decoded: b"123" or b'"x"' are more likely opaque bytes than JSON.
    # The first byte decides cheaply for almost every record; lstrip copies, so it comes last.
    first = raw[0]
    if first != _OPEN_BRACE and (first not in _JSON_SPACE or raw.lstrip()[:1] != b"{"):
        return raw
    try:
        decoded = serialization.loads(raw)
    except ValueError:
        return raw
    return decoded if isinstance(decoded, dict) else raw


def decode_header(raw: bytes | None) -> str | bytes:
    """A header value as text when it is valid UTF-8, else the bytes as they came."""
    if raw is None:
        return b""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


class ConsumedRecord:
    """One record read by `RedpandaConsumer`.

    `value` is decoded when the record is handed out (a first-byte test settles non-JSON
    values without parsing); headers are decoded on first access and cached.
    """

    __slots__ = ("_headers", "_raw", "value")

    value: dict[str, Any] | bytes | None
    """The value decoded: a JSON object as a dict, anything else as bytes (None: tombstone)."""

    def __init__(self, raw: RawRecord) -> None:
        self._raw = raw
        self._headers: Any = _UNSET
        value = raw.value
        # decode_value's first-byte test inlined: bytes above space other than "{" are not a
        # JSON object, and that settles most binary records without a function call.
        self.value = value if value and value[0] != _OPEN_BRACE and value[0] > _SPACE else decode_value(value)

    @property
    def topic(self) -> str:
        return self._raw.topic

    @property
    def partition(self) -> int:
        return self._raw.partition

    @property
    def offset(self) -> int:
        return self._raw.offset

    @property
    def timestamp_ms(self) -> int:
        return self._raw.timestamp

    @property
    def key(self) -> bytes | None:
        return self._raw.key

    @property
    def raw_value(self) -> bytes | None:
        """The value bytes exactly as they are stored in Kafka."""
        return self._raw.value

    @property
    def headers(self) -> Mapping[str, str | bytes]:
        """Headers by name; values are `str` when valid UTF-8, else `bytes`. A repeated name keeps
        its last value; `raw_headers` has them all."""
        if self._headers is _UNSET:
            self._headers = {name: decode_header(value) for name, value in self._raw.headers}
        return self._headers  # type: ignore[no-any-return]

    @property
    def raw_headers(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(self._raw.headers)

    def __repr__(self) -> str:
        return (
            f"ConsumedRecord(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, key={self.key!r})"
        )


class RecordBatch(Sequence[ConsumedRecord]):
    """The records of one `getmany()` call, in partition order.

    A view over aiokafka's records: each `ConsumedRecord` is made when it is reached, so a
    large batch costs no extra objects until they are used (indexing twice gives two equal views).
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: list[RawRecord]) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[ConsumedRecord]:
        return map(ConsumedRecord, self._raw)

    @overload
    def __getitem__(self, index: int) -> ConsumedRecord: ...

    @overload
    def __getitem__(self, index: slice) -> RecordBatch: ...

    def __getitem__(self, index: int | slice) -> ConsumedRecord | RecordBatch:
        if isinstance(index, slice):
            return RecordBatch(self._raw[index])
        return ConsumedRecord(self._raw[index])

    def __repr__(self) -> str:
        return f"RecordBatch({len(self._raw)} records)"
