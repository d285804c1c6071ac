"""The event being processed right now, so events published meanwhile become its children.

A context variable follows the consuming task into the handler and into every publish the
handler makes, whichever tier or producer it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from alpha_streaming.envelope import EventEnvelope

__all__ = ("current_event", "processing_event")

_current_event: ContextVar[EventEnvelope | None] = ContextVar("alpha_current_event", default=None)


def current_event() -> EventEnvelope | None:
    """The envelope whose handler is running in this task, if any."""
    return _current_event.get()


@contextmanager
def processing_event(envelope: EventEnvelope) -> Iterator[EventEnvelope]:
    """Mark `envelope` as the cause of everything published inside the block."""
    token = _current_event.set(envelope)
    try:
        yield envelope
    finally:
        _current_event.reset(token)
