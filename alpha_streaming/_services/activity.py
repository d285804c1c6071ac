"""`ActivityProbe`: when each topic last finished a message, for the health report's freshness."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware

if TYPE_CHECKING:
    from types import TracebackType

    from faststream import ContextRepo

__all__ = ("ActivityProbe",)


class ActivityProbe:
    """Middleware factory recording when each topic last finished a message (outermost, cheap)."""

    def __init__(self) -> None:
        self.last_message_at: dict[str, float] = {}

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware:
        return _ActivityRecorder(msg, context=context, probe=self)

    def seconds_since(self, topics: list[str]) -> float | None:
        seen = [self.last_message_at[t] for t in topics if t in self.last_message_at]
        return round(time.monotonic() - max(seen), 3) if seen else None


class _ActivityRecorder(BaseMiddleware):
    __slots__ = ("_probe",)

    def __init__(self, msg: Any, /, *, context: ContextRepo, probe: ActivityProbe) -> None:
        super().__init__(msg, context=context)
        self._probe = probe

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        topic = getattr(self.msg, "topic", None)  # None for publishes and batches
        if isinstance(topic, str):
            self._probe.last_message_at[topic] = time.monotonic()
        return False
