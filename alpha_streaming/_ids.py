"""Event ids (RFC 9562): UUIDv7 for root events, name-based UUIDv5 for child events.

Root events: Python gains `uuid.uuid7` only in 3.14; `uuid7` is the same layout (RFC 9562 §5.7)
with the 12-bit `rand_a` field used as a sub-millisecond counter (RFC 9562 §6.2, method 1), which
keeps ids from one process strictly increasing even when many are made in the same millisecond.

Child events: a handler that runs again (the honest window: it died before its done marker, or
an output failed and it is retried) must emit the ids it emitted before, or the next service's
dedup cannot recognise the repeat. `child_id` is a pure function of (parent id, destination topic,
ordinal of the publish to that topic within the run): UUIDv5 (RFC 9562 §5.5), the standard
name-based version, so any tool can recompute or validate it with its own UUID library. A child
id carries no time; the envelope's `ts` does.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ("CHILD_ID_NAMESPACE", "child_id", "uuid7")

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF

CHILD_ID_NAMESPACE = uuid.UUID("0193a3c4-7d2e-7b41-9a8f-5c1e2d3b4a60")
"""The UUIDv5 namespace of child event ids (fixed forever: changing it changes every child id)."""


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


def child_id(parent_id: str, topic: str, ordinal: int) -> uuid.UUID:
    """The id of the `ordinal`-th event (0-based) published to `topic` while handling `parent_id`."""
    return uuid.uuid5(CHILD_ID_NAMESPACE, f"{parent_id}\n{topic}\n{ordinal}")
