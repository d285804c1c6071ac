"""A bounded LRU set with per-entry expiry: the dedup middleware's local memory of done events.

The system this replaces evicted arbitrary entries (`set.pop()`) from a cache documented as
FIFO (seed-lessons #8). Here the least recently used entry goes first, and an entry older
than the TTL is never reported as present, so the cache cannot outlive Redis's done marker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ("LruTtlSet",)


class LruTtlSet:
    """At most `maxsize` keys, each forgotten `ttl_s` seconds after it was added."""

    __slots__ = ("_clock", "_items", "_ttl_s", "maxsize")

    def __init__(self, maxsize: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0 (0 disables the cache), got {maxsize}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.maxsize = maxsize
        self._ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, float] = OrderedDict()  # key -> expiry (clock time)

    def __contains__(self, key: object) -> bool:
        expiry = self._items.get(key)  # type: ignore[call-overload]
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._items[key]  # type: ignore[arg-type]
            return False
        self._items.move_to_end(key)  # type: ignore[arg-type]
        return True

    def add(self, key: str) -> None:
        if self.maxsize == 0:
            return
        self._items[key] = self._clock() + self._ttl_s
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
