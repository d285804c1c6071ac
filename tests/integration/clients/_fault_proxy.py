"""A TCP proxy in front of the real broker that can lose one produce response on the wire.

It forwards Kafka frames both ways and rewrites the broker address in Metadata and
FindCoordinator responses to its own, so clients keep talking through it. When armed, it lets
the next Produce request reach the broker (the records are appended), swallows the broker's
response and cuts the connection: the client sees a network error and must resend the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

PRODUCE, METADATA, FIND_COORDINATOR = 0, 3, 10


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._host = upstream_host
        self._port = upstream_port
        self._server: asyncio.Server | None = None
        self.port = 0
        self.arm_drop_produce_response = False
        self.dropped_responses = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Closing the sockets ends each connection's pumps; cancelling the server's own
        # handler tasks instead would make asyncio log a spurious error.
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        await self._server.wait_closed()

    def _rewrite(self, body: bytes) -> bytes:
        upstream = self._host.encode() + struct.pack(">i", self._port)
        return body.replace(upstream, b"127.0.0.1" + struct.pack(">i", self.port))

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        broker_r, broker_w = await asyncio.open_connection(self._host, self._port)
        self._writers.update((client_w, broker_w))
        api_keys: dict[int, int] = {}

        async def requests() -> None:
            while True:
                size = await client_r.readexactly(4)
                body = await client_r.readexactly(struct.unpack(">i", size)[0])
                api_key, _version, correlation = struct.unpack(">hhi", body[:8])
                api_keys[correlation] = api_key
                broker_w.write(size + body)
                await broker_w.drain()

        async def responses() -> None:
            while True:
                size = await broker_r.readexactly(4)
                body = await broker_r.readexactly(struct.unpack(">i", size)[0])
                api_key = api_keys.pop(struct.unpack(">i", body[:4])[0], None)
                if api_key == PRODUCE and self.arm_drop_produce_response:
                    self.arm_drop_produce_response = False
                    self.dropped_responses += 1
                    return  # the broker has appended the records; the client never hears so
                if api_key in (METADATA, FIND_COORDINATOR):
                    body = self._rewrite(body)
                client_w.write(struct.pack(">i", len(body)) + body)
                await client_w.drain()

        pumps = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, broker_w):
                writer.close()
                self._writers.discard(writer)
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            self._tasks.discard(task)
