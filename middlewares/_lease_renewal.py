"""`LeaseRenewer`: keeps every live dedup lease of one `DeduplicationMiddleware` alive, with one timer.

A task per message (sleep, renew, cancelled when the handler ends) cost a task creation and a
cancellation on every message, and a cancellation that hit a renewal mid-command left its Redis
connection to the garbage collector. Here a message only records its lease (`hold`) and forgets it
(`drop`): two dict operations. One timer fires every `every_s` while leases are live and renews
them all from one task that is never cancelled (`close()` waits for it), one Redis call per hash
slot (`slot`: the group's key prefix; a Cluster call must stay in one slot). A lease is renewed
within `every_s` of being taken, a third of its TTL; the renew script extends only a lease its
owner still holds, so renewing one that just ended is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ("LeaseRenewer",)

log = logging.getLogger(__name__)


class LeaseRenewer:
    """The live leases (owner token -> keys) and the one timer that renews them."""

    __slots__ = ("_every_s", "_live", "_loop", "_renew", "_task", "_timer")

    def __init__(self, renew: Callable[[list[str], list[str]], Awaitable[Any]], *, every_s: float) -> None:
        """`renew(keys, owners)` extends each key's lease held by its owner (one Redis call, one slot)."""
        self._renew = renew
        self._every_s = every_s
        self._live: dict[str, tuple[str, list[str]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def hold(self, owner: str, keys: list[str], slot: str = "") -> None:
        self._live[owner] = (slot, keys)
        if self._timer is None or self._loop is not asyncio.get_running_loop():
            self._arm()

    def drop(self, owner: str) -> None:
        self._live.pop(owner, None)

    async def close(self) -> None:
        """Stop the timer and wait for a renewal under way (never cancelled mid-command)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _arm(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_later(self._every_s, self._due)

    def _due(self) -> None:
        self._timer = None
        if not self._live:
            return  # the next `hold` arms it again
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew_all(dict(self._live)))
        self._arm()

    async def _renew_all(self, live: dict[str, tuple[str, list[str]]]) -> None:
        slots: dict[str, tuple[list[str], list[str]]] = {}
        for owner, (slot, keys) in live.items():
            slot_keys, owners = slots.setdefault(slot, ([], []))
            slot_keys += keys
            owners += [owner] * len(keys)
        for keys, owners in slots.values():
            try:
                await self._renew(keys, owners)
            except Exception as exc:  # e.g. Redis down: retried next tick, before the lease TTL is out
                log.warning("dedup: lease renewal failed (%s: %s)", type(exc).__name__, exc)
