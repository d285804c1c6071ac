"""The one serialiser both tiers use for JSON bodies.

Decimal is written as a JSON string ("101.25"): lossless, and pydantic turns it back into a
`Decimal` wherever the payload model says so. Datetimes are ISO 8601 with their offset.
Both tiers call these two functions, so a value never changes type between them.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import BaseModel

__all__ = ("dumps", "loads")


def dumps(value: Any) -> bytes:
    """Serialise a pydantic model, mapping or other JSON-able value to UTF-8 JSON bytes."""
    if isinstance(value, BaseModel):
        return value.model_dump_json(by_alias=True).encode()
    return pydantic_core.to_json(value, by_alias=True)


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes; raises `ValueError` on anything that is not JSON."""
    return pydantic_core.from_json(data)
