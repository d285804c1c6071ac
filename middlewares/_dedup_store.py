"""`DedupStore`: the claims, done markers and releases of one event-loop turn, in one script call per slot.

With many messages in flight (a batch, `concurrency=N`), each message's own EVALSHA per stage
cost one Redis round trip per message per stage. Here the first request of a group (one hash tag,
so one Redis Cluster slot) in a turn opens a call and yields once to the event loop; every request
of that group made meanwhile joins it with a future. The opener then sends them all as one call of
the dedup script and hands each caller its own answers: no task, no timer on the path of a message
that is alone. A failed call (connection refused, CLUSTERDOWN...) fails every request it carried,
so each message applies the outage policy itself. An opener cancelled before or during its call
never strands the others: they get the call's outcome, or an error that makes them try again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError

from middlewares._lease_scripts import CLAIM, MARK_DONE, PEEK, RELEASE

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ("DedupStore", "compact_id", "lease_key")

MARKERS = "#"
"""After a group's prefix, the compact done markers' keys (`#m`, `#<bucket>:...`); never a lease key."""


def compact_id(event_id: str) -> bytes:
    """16 bytes for any event id: BLAKE2b, so UUIDs and free-form ids alike spread evenly over shards."""
    return blake2b(event_id.encode(), digest_size=16).digest()


def lease_key(prefix: str, event_id: str) -> str:
    """`<prefix><event id>`: the lease key, the same as the pre-compact layout's (one key per event)."""
    # An id that starts like a marker key is moved aside (`##...`), so it can never name one.
    return prefix + event_id if not event_id.startswith(MARKERS) else f"{prefix}{MARKERS}{event_id}"


@dataclass(slots=True)
class _Call:
    """The requests of one turn for one group, and the futures of those who joined it."""

    events: list[bytes] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    requests: list[bytes | str | int] = field(default_factory=list)
    joined: list[tuple[asyncio.Future[list[int]], int, int]] = field(default_factory=list)

    def add(self, op: str, event_ids: list[str], owner: str) -> tuple[int, int]:
        start = len(self.events)
        for event_id in event_ids:
            self.events.append(event_id.encode())
            self.ids.append(compact_id(event_id))
        self.requests += (op, owner, len(event_ids))
        return start, len(self.events)

    def arguments(self) -> list[bytes | str | int]:
        """The ids, the event ids and their lengths, each as one argument; then the requests."""
        lengths = ",".join([str(len(e)) for e in self.events])
        return [b"".join(self.ids), b"".join(self.events), lengths, *self.requests]


class DedupStore:
    """Coalesces dedup requests per event-loop turn and consumer group into single script calls."""

    def __init__(
        self,
        script: AsyncScript,
        *,
        lease_ms: int,
        window_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._script = script
        self.lease_ms = lease_ms
        self.window_ms = window_ms
        # Two buckets per window: a marker lives 1 to 1.5 windows; a new id is checked in ~3 hashes
        # (a quarter window cost ~5 HEXISTS per claim: 28 µs of Redis time per event, claim + done).
        self.span_ms = max(1, window_ms // 2)
        self._clock = clock
        self._open: dict[str, _Call] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoffs: set[asyncio.Task[list[int]]] = set()
        self.calls = 0
        """Script calls sent so far (what the coalescing saves is visible in tests and the bench)."""

    async def claim(self, prefix: str, event_ids: list[str], owner: str) -> list[int]:
        """Per event: HELD, CLAIMED (the lease is now `owner`'s) or DONE."""
        return await self._request(prefix, CLAIM, event_ids, owner)

    async def done(self, prefix: str, event_ids: list[str], owner: str) -> None:
        """Write the done markers and drop `owner`'s leases."""
        await self._request(prefix, MARK_DONE, event_ids, owner)

    async def release(self, prefix: str, event_ids: list[str], owner: str) -> None:
        """Drop `owner`'s leases, so a retry or a DLQ replay runs the events again."""
        await self._request(prefix, RELEASE, event_ids, owner)

    async def peek(self, prefix: str, event_ids: list[str]) -> list[int]:
        """Per event, changing nothing: HELD (leased), CLAIMED (free: a claim would take it) or DONE."""
        return await self._request(prefix, PEEK, event_ids, "")

    async def _request(self, prefix: str, op: str, event_ids: list[str], owner: str) -> list[int]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._open, self._loop = {}, loop  # calls left open on a closed loop are dropped
        call = self._open.get(prefix)
        if call is not None:  # a call of this turn is open: join it
            start, end = call.add(op, event_ids, owner)
            future: asyncio.Future[list[int]] = loop.create_future()
            call.joined.append((future, start, end))
            return await future
        call = self._open[prefix] = _Call()
        start, end = call.add(op, event_ids, owner)
        try:
            await asyncio.sleep(0)  # one turn of the loop: the other messages' requests join
        except asyncio.CancelledError:
            self._close(prefix, call)
            if call.joined:  # send for those who joined, without us
                task = loop.create_task(self._send(prefix, call))
                self._handoffs.add(task)
                task.add_done_callback(self._handoffs.discard)
            raise
        self._close(prefix, call)
        return (await self._send(prefix, call))[start:end]

    def _close(self, prefix: str, call: _Call) -> None:
        if self._open.get(prefix) is call:
            del self._open[prefix]

    async def _send(self, prefix: str, call: _Call) -> list[int]:
        now_ms = int(self._clock() * 1000)
        head: list[bytes | str | int] = [
            now_ms,
            self.lease_ms,
            self.window_ms,
            self.span_ms,
            prefix + MARKERS,
        ]
        self.calls += 1
        try:
            answers: list[int] = await self._script([prefix + MARKERS + "m"], head + call.arguments())
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else _Interrupted("the dedup call was interrupted")
            for future, _, _ in call.joined:
                if not future.done():
                    future.set_exception(error)
            raise
        for future, start, end in call.joined:
            if not future.done():
                future.set_result(answers[start:end])
        return answers

    async def aclose(self) -> None:
        """Wait for calls sent on behalf of cancelled openers."""
        while self._handoffs:
            await asyncio.gather(*self._handoffs, return_exceptions=True)


class _Interrupted(RedisConnectionError):
    """The call's sender was cancelled mid-call: its outcome is unknown, so those who joined retry."""
