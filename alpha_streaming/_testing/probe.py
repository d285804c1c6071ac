"""How each delivery ended, read from the enhanced tier's own per-message state.

The probe is put outermost on the broker for the test: it sees the `MessageState` the tier's
middlewares filled in (outcome, attempts, retries, error, envelope) once all of them are done.
The retry backoffs are recorded by the kit's `sleep` (the `RetryPolicy(sleep=...)` hook), which
returns at once instead of waiting, and credited to the delivery being processed.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware

from middlewares._state import MessageState, Outcome, state_of

if TYPE_CHECKING:
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage

    from alpha_streaming._envelope import EventEnvelope

__all__ = ("Delivery", "Probe", "Sleeps")

_delays: ContextVar[list[float] | None] = ContextVar("alpha_testing_delays", default=None)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one consumer group's processing of one published record ended."""

    status: Outcome
    """"processed", "deduplicated", "dead_lettered", or "redeliver" (not decided: it would come again)."""
    attempts: int
    """Handler runs, the first included (1 for a duplicate: the claim ran once)."""
    retries: int
    retry_delays: tuple[float, ...]
    """The backoff before each retry, as the retry policy computed it (never waited)."""
    error: BaseException | None
    """The last error (the one that was dead-lettered, or one a retry overcame)."""
    envelope: EventEnvelope | None
    """The consumed envelope; None when the bytes were no envelope."""
    topic: str
    partition: int
    offset: int
    group_id: str | None


class Sleeps:
    """The retry policy's `sleep` under test: records each wait, yields once, returns."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        current = _delays.get()
        if current is not None:
            current.append(delay)
        await asyncio.sleep(0)


class Probe:
    """Outermost middleware factory: keeps the final state of the records the kit delivers."""

    def __init__(self) -> None:
        self._watched: set[int] = set()
        self._ended: dict[int, tuple[MessageState, tuple[float, ...]]] = {}

    def watch(self, record: object) -> None:
        self._watched.add(id(record))

    def take(self, record: object) -> tuple[MessageState, tuple[float, ...]] | None:
        """The state and backoffs of a watched record's processing (None if it never got that far)."""
        self._watched.discard(id(record))
        return self._ended.pop(id(record), None)

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _ProbeRuntime(msg, context=context, probe=self)

    def finished(self, msg: StreamMessage[Any], delays: list[float]) -> None:
        raw = msg.raw_message
        first = raw[0] if isinstance(raw, list | tuple) and raw else raw
        if id(first) in self._watched:
            self._ended[id(first)] = (state_of(msg), tuple(delays))


class _ProbeRuntime(BaseMiddleware[Any, Any]):
    def __init__(self, msg: Any, /, *, context: ContextRepo, probe: Probe) -> None:
        super().__init__(msg, context=context)
        self._probe = probe

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        delays: list[float] = []
        token = _delays.set(delays)
        try:
            return await call_next(msg)
        finally:
            _delays.reset(token)
            self._probe.finished(msg, delays)
