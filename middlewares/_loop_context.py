"""`LoopContext`: FastStream's `Context(name)` injection, resolved on the event loop.

fast_depends (3.x, under FastStream 0.7.8) runs a custom field's synchronous `use` through
`anyio.to_thread.run_sync`: every `Context(...)` parameter of a handler (`KafkaMessage`, `Logger`,
...) costs a worker-thread round trip per message, ~0.15 ms on the 2-CPU bench machine, more than
the rest of FastStream's per-message work (bench/README.md, "the baseline"). An async `use` is
awaited in place, but any custom field still makes fast_depends open a task group per message:
what is read per message (`CurrentEnvelope` and co.) is a dependency on `_state` instead, and
this is left to `CurrentProducer`, a once-per-service global.
"""

from __future__ import annotations

from typing import Any

from faststream._internal.context.context_type import Context

__all__ = ("LoopContext",)


class LoopContext(Context):
    """`Context(name)` without the thread hop; same arguments, same lookup."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        resolved: dict[str, Any] = super().use(**kwargs)
        return resolved
