"""A legacy-style service built with `StreamServiceBuilder`, as the original system wrote them.

    python -m examples.builder_service               # start() ... Ctrl-C ... stop()
    faststream run examples.builder_service:app      # the same service as a FastStream app

A risk gate with a legacy handler `async def handle(message: dict, topic: str)`: `message`
is the consumed envelope as a dict (payload under `data`), exactly like the original stack.
Accepted signals are republished through the service's producer to `{broker}.signals.validated`;
the published event is a child of the consumed one (correlation and causation filled in).
`EXAMPLE_BROKER` picks the broker namespace (default `paper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis

from alpha_streaming import Settings, StreamService, StreamServiceBuilder, TopicMap

__all__ = ("MAX_NOTIONAL", "app", "build_service", "service")

MAX_NOTIONAL = Decimal(100_000)


def build_service(settings: Settings, redis: Redis, broker: str) -> StreamService:
    """The risk gate for one broker namespace; the builder calls may come in any order."""
    topics = TopicMap(broker)
    built: StreamService | None = None

    async def handle(message: dict[str, Any], topic: str) -> None:
        signal = message["data"]
        notional = Decimal(signal["quantity"]) * Decimal(signal["limit_price"])
        if notional > MAX_NOTIONAL:
            print(f"{topic}: rejected {message['id']} (notional {notional})", flush=True)
            return
        assert built is not None
        # Sent while this handler runs: the new envelope becomes a child of `message`.
        await built.producer.send(topic=topics.signals_validated, value=signal, key=message["key"])
        print(f"{topic}: validated {message['id']} (notional {notional})", flush=True)

    built = (
        StreamServiceBuilder("legacy-risk-gate", settings.redpanda, settings)
        .add_consumer_handler(
            topics=[topics.signals_raw],
            group_id="legacy-risk-gate.signals",
            handler_func=handle,
            concurrency=8,  # up to 8 signals at once; each strategy:token key in order
        )
        .with_metrics()
        .add_producer(topics=[topics.signals_validated])
        .with_redis(redis)
        .with_error_handling()
        .build()
    )
    return built


settings = Settings()
service = build_service(
    settings, Redis.from_url(settings.redis_url), os.environ.get("EXAMPLE_BROKER", "paper")
)
app = service.app


async def main() -> None:
    """Legacy lifecycle: `start()`, serve until SIGINT/SIGTERM, `stop()` (drains and commits)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    print(
        f"{service.name} consuming {', '.join(service.consumed_topics)}, "
        f"producing to {', '.join(service.produced_topics)}; Ctrl-C to stop",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await service.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
