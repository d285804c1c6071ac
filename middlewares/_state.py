"""Per-message state shared by the middlewares of the enhanced stack.

Each FastStream middleware is a new object per message, and the stack's middlewares are separate
objects; they meet on the parsed `StreamMessage`, which is the same object all the way down.
Inner middlewares record what happened (outcome, attempts, envelope); outer ones read it
(metrics count each outcome exactly once; error routing knows the attempt number).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from faststream.message import StreamMessage

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._topics import BrokerContext

__all__ = ("MessageState", "Outcome", "current_state", "handling", "state_of")

_ATTRIBUTE = "_alpha_state"


class Outcome(StrEnum):
    """How the processing of one consumed message ended (each message gets exactly one)."""

    PROCESSED = "processed"
    """The handler succeeded; the offset will be committed."""
    DEDUPLICATED = "deduplicated"
    """Seen before; acknowledged without running the handler or publishing anything."""
    DEAD_LETTERED = "dead_lettered"
    """Written to `<topic>.dlq` (acknowledged by the broker); the offset will be committed."""
    REDELIVER = "redeliver"
    """Could not be decided now (DLQ write failed, Redis down too long): not committed, seen again."""


@dataclass(slots=True)
class MessageState:
    outcome: Outcome | None = None
    attempts: int = 0
    retries: int = 0
    envelope: EventEnvelope | None = None
    batch_envelopes: tuple[EventEnvelope, ...] = ()
    """Batch subscribers: the envelopes of the records the handler receives, in order."""
    broker_context: BrokerContext | None = None
    error: BaseException | None = None
    redis_outage: str | None = None
    """Set by dedup when Redis failed for this message: "paused" or "failed_open"."""


def state_of(msg: StreamMessage[Any]) -> MessageState:
    """The state of this message, created on first use."""
    state: MessageState | None = getattr(msg, _ATTRIBUTE, None)
    if state is None:
        state = MessageState()
        setattr(msg, _ATTRIBUTE, state)
    return state


_current: ContextVar[MessageState | None] = ContextVar("alpha_message_state", default=None)


def current_state() -> MessageState | None:
    """The state of the message whose handler runs in this task (set by the envelope middleware)."""
    return _current.get()


@contextmanager
def handling(state: MessageState) -> Iterator[None]:
    """Make `state` the current message's for the block: what `CurrentEnvelope` and co. read.

    A context variable, not FastStream's context: a `Context(...)` parameter makes fast_depends
    open an anyio task group per message (~30 µs on the bench machine, bench/README.md).
    """
    token = _current.set(state)
    try:
        yield
    finally:
        _current.reset(token)
