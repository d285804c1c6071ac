"""Header values FastStream can decode, with the original bytes kept for the dead-letter record.

Kafka header values are arbitrary bytes, but FastStream's parser decodes every one as UTF-8 and
fails the whole message otherwise: a valid event would be lost to, say, a binary header another
tool added. Such values are passed on backslash-escaped; the DLQ record gets the bytes as they came.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ("escape_unreadable_headers", "restore_original_headers")

# Where a record's own header bytes wait while FastStream parses an escaped copy of them.
_ORIGINAL_HEADERS = "_alpha_original_headers"


def escape_unreadable_headers(record: Any) -> None:
    """Replace `record.headers` by a decodable copy if any value is not UTF-8 (keeping the original)."""
    headers = getattr(record, "headers", None)
    if not headers:
        return
    try:
        for _, value in headers:
            value.decode()
    except (UnicodeDecodeError, AttributeError):
        setattr(record, _ORIGINAL_HEADERS, list(headers))
        record.headers = [
            (key, value.decode("utf-8", "backslashreplace").encode() if isinstance(value, bytes) else b"")
            for key, value in headers
        ]


def restore_original_headers(records: Iterable[Any]) -> None:
    """Put back the header bytes as they arrived (before a DLQ write)."""
    for record in records:
        original = getattr(record, _ORIGINAL_HEADERS, None)
        if original is not None:
            record.headers = original
