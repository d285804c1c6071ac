"""One in-memory Redis for a service under test: fakeredis, running the dedup Lua scripts for real.

fakeredis implements Redis's commands in Python and, with `lupa` (its `lua` extra), runs EVAL and
EVALSHA in an embedded Lua interpreter: the dedup scripts in `middlewares._lease_scripts` execute
as they do on a Redis server (Lua 5.1, like Redis's), so claims, leases, the compact done markers
and their TTLs behave as in production.
The service's own Redis clients are kept: each is pointed at the in-memory server for the test
(its connection pool swapped) and given its pool back afterwards. When one of them already is a
fakeredis client, its server is the one every client uses (data seeded before the test stays).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from redis.asyncio import ConnectionPool, Redis

try:
    from fakeredis import FakeAsyncRedis, FakeServer
except ImportError as exc:
    raise ImportError(
        "alpha_streaming.testing needs fakeredis with Lua: pip install 'alpha-streaming[testing]'"
    ) from exc
if importlib.util.find_spec("lupa") is None:
    raise ImportError(
        "alpha_streaming.testing runs the dedup Lua scripts with fakeredis[lua], but lupa is missing: "
        "pip install 'alpha-streaming[testing]'"
    )

__all__ = ("MemoryRedis",)

# Client options that change how replies are decoded; the in-memory pool keeps the client's own.
_DECODING = ("decode_responses", "encoding", "encoding_errors", "protocol")


class MemoryRedis:
    """Points Redis clients at one in-memory server and gives them their own connection pools back."""

    def __init__(self) -> None:
        self._swapped: list[tuple[Redis, ConnectionPool]] = []
        self._client: FakeAsyncRedis | None = None

    @property
    def client(self) -> FakeAsyncRedis:
        """A client of the in-memory server, for seeding data and for assertions."""
        if self._client is None:
            raise RuntimeError("the in-memory Redis exists only inside `async with TestStreamService(...)`")
        return self._client

    def adopt(self, clients: Iterable[Redis]) -> None:
        unique = list({id(client): client for client in clients}.values())
        fakes = [client for client in unique if isinstance(client, FakeAsyncRedis)]
        # The pools made here reach the hub's server: its pool options name that server.
        hub = fakes[0] if fakes else FakeAsyncRedis(server=FakeServer())
        for client in unique:
            if not isinstance(client, FakeAsyncRedis):
                options = client.connection_pool.connection_kwargs
                self._swapped.append((client, client.connection_pool))
                client.connection_pool = _pool_like(hub, {k: options[k] for k in _DECODING if k in options})
        self._client = FakeAsyncRedis(connection_pool=_pool_like(hub, {}))

    async def restore(self) -> None:
        while self._swapped:
            client, pool = self._swapped.pop()
            stand_in, client.connection_pool = client.connection_pool, pool
            await stand_in.disconnect()
        if self._client is not None:
            await self._client.connection_pool.disconnect()
            self._client = None


def _pool_like(hub: FakeAsyncRedis, options: dict[str, object]) -> ConnectionPool:
    """A new pool on `hub`'s in-memory server, with `options` (how replies are decoded) on top."""
    pool = hub.connection_pool
    return ConnectionPool(connection_class=pool.connection_class, **{**pool.connection_kwargs, **options})
