"""The event being processed right now, so events published meanwhile become its children.

A context variable follows the consuming task into the handler and into every publish the
handler makes, whichever tier or producer it uses. It also counts the run's publishes per
destination topic, which is what makes child ids the same on every re-run of the handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._ids import child_id

__all__ = ("HandlerRun", "current_event", "current_run", "processing_event")


class HandlerRun:
    """One run of a handler for `event`: hands out the ids of the events it publishes, in order."""

    __slots__ = ("_published", "event")

    def __init__(self, event: EventEnvelope) -> None:
        self.event = event
        self._published: dict[str, int] = {}

    def next_child_id(self, topic: str) -> str:
        """The id of the next event this run publishes to `topic`; a re-run gets the same sequence."""
        ordinal = self._published.get(topic, 0)
        self._published[topic] = ordinal + 1
        return str(child_id(self.event.id, topic, ordinal))


_current_run: ContextVar[HandlerRun | None] = ContextVar("alpha_current_run", default=None)


def current_run() -> HandlerRun | None:
    """The handler run active in this task, if any."""
    return _current_run.get()


def current_event() -> EventEnvelope | None:
    """The envelope whose handler is running in this task, if any."""
    run = _current_run.get()
    return run.event if run is not None else None


@contextmanager
def processing_event(envelope: EventEnvelope) -> Iterator[HandlerRun]:
    """Mark `envelope` as the cause of everything published inside the block (a fresh run)."""
    run = HandlerRun(envelope)
    token = _current_run.set(run)
    try:
        yield run
    finally:
        _current_run.reset(token)
