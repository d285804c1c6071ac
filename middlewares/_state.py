"""Per-message state shared by the middlewares of the enhanced stack.

Each FastStream middleware is a new object per message, and the stack's middlewares are separate
objects; they meet on the parsed `StreamMessage`, which is the same object all the way down.
Inner middlewares record what happened (outcome, attempts, envelope); outer ones read it
(metrics count each outcome exactly once; error routing knows the attempt number).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from faststream.message import StreamMessage

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import EnvelopeError
from alpha_streaming._topics import BrokerContext

__all__ = ("MessageState", "Outcome", "current_state", "handled", "handling", "state_of")

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


def handled() -> MessageState:
    """`current_state()`, or an `EnvelopeError` saying the envelope middleware is missing."""
    state = _current.get()
    if state is None or state.broker_context is None:
        raise EnvelopeError("no validated envelope for this message; is EnvelopeMiddleware installed?")
    return state


class handling:  # used like a function: `with handling(state):`
    """Make `state` the current message's for the block: what `CurrentEnvelope` and co. read.

    A context variable, not FastStream's context: a `Context(...)` parameter makes fast_depends
    open an anyio task group per message (~30 µs on the bench machine, bench/README.md). A class
    with slots, not a generator: it is entered once per message.
    """

    __slots__ = ("_state", "_token")

    def __init__(self, state: MessageState) -> None:
        self._state = state

    def __enter__(self) -> None:
        self._token = _current.set(self._state)

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)
