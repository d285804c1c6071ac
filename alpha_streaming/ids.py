"""RFC 9562 UUIDv7 event ids: time-ordered, so ids sort by creation time within a process.

Python gains `uuid.uuid7` only in 3.14; this is the same layout (RFC 9562 §5.7) with the
12-bit `rand_a` field used as a sub-millisecond counter (RFC 9562 §6.2, method 1), which keeps
ids from one process strictly increasing even when many are made in the same millisecond.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ("uuid7",)

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def uuid7() -> uuid.UUID:
    """Return a new UUIDv7, strictly greater than the previous one made by this process."""
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2)) & 0x7FF  # start low: room to count up
        else:
            # Same millisecond (or the clock stepped back): keep counting from the last id.
            _counter += 1
            if _counter > _COUNTER_MAX:
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8)) & 0x3FFF_FFFF_FFFF_FFFF
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version 7
        | counter << 64
        | 0b10 << 62  # RFC 9562 variant
        | rand_b
    )
    return uuid.UUID(int=value)
