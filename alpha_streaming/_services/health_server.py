"""`HealthServer`: the orchestrator's `GET /health/live` and `GET /health/ready` endpoints.

A plain asyncio responder rather than uvicorn: two read-only routes need no framework, it runs
inside the orchestrator's event loop, and it leaves signal handling to the orchestrator
(uvicorn installs handlers of its own).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from alpha_streaming._services.health import PROBE_TIMEOUT_S, HealthReport

__all__ = ("HealthServer", "ReportSource")

log = logging.getLogger(__name__)

ReportSource = Callable[[], Awaitable[HealthReport]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """`GET /health/live` and `GET /health/ready` as JSON; 200 when true, 503 when not."""

    def __init__(self, live: ReportSource, ready: ReportSource, *, host: str, port: int) -> None:
        self._routes = {"/health/live": (live, "live"), "/health/ready": (ready, "ready")}
        self._host, self._port = host, port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with `port=0`)."""
        if self._server is None:
            raise RuntimeError("the health server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("health endpoint on http://%s:%d/health/{live,ready}", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._respond(reader), PROBE_TIMEOUT_S * 3)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            writer.close()
            return
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + payload)
            await writer.drain()
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        request = await reader.readuntil(b"\r\n\r\n")  # headers only: these routes take no body
        method, path, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        route = self._routes.get(path.split("?", 1)[0])
        if route is None:
            return 404, {"error": f"no route {path}; use /health/live or /health/ready"}
        if method not in {"GET", "HEAD"}:
            return 405, {"error": f"{method} not allowed; use GET"}
        source, flag = route
        report = (await source()).to_dict()
        return (200 if report[flag] else 503), report
