"""The process bench/rss.py measures: `python -m bench._rss_service VARIANT BOOTSTRAP REDIS N TOPIC...`.

Each variant imports only what it uses, so the plain app does not carry the builder's modules
(redis-py, OpenTelemetry, alpha_streaming) in its RSS. It consumes `PER_TOPIC` records from each
topic (one consumer group per topic), prints `consumed N` and runs until its stdin closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel  # FastStream needs pydantic anyway

CHILD_TIMEOUT_S = 180.0


class Position(BaseModel):
    """The payload; a typed handler's model must live at module level."""

    account: str
    symbol: str
    qty: int


def plain_app(bootstrap: str, names: list[str], count: Callable[[], None]) -> Any:
    from faststream import FastStream
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    for topic in names:

        @broker.subscriber(topic, group_id=f"rss-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest")
        async def plain(body: dict[str, Any]) -> None:
            count()

    return FastStream(broker)


def built_app(bootstrap: str, redis_url: str, names: list[str], count: Callable[[], None]) -> Any:
    import redis.asyncio as aioredis

    from alpha_streaming import (
        ConsumerSettings,
        DedupSettings,
        RedpandaSettings,
        Settings,
        StreamServiceBuilder,
    )

    config = RedpandaSettings(bootstrap_servers=bootstrap, client_id="alpha-bench")
    settings = Settings(
        redpanda=config, dedup=DedupSettings(done_ttl_s=600), consumer=ConsumerSettings(commit_every=100)
    )
    builder = (
        StreamServiceBuilder("bench-rss", config, settings)
        .with_redis(aioredis.Redis.from_url(redis_url))
        .with_error_handling()
        .with_metrics()
    )
    for topic in names:

        async def typed(position: Position) -> None:
            count()

        builder.add_consumer_handler(
            topics=[topic], group_id=f"rss-{uuid.uuid4().hex[:8]}", handler_func=typed
        )
    return builder.build().app


async def serve(variant: str, bootstrap: str, redis_url: str, names: list[str], per_topic: int) -> None:
    logging.disable(logging.INFO)  # FastStream's access log: two lines per message
    seen = 0
    enough = asyncio.Event()

    def count() -> None:
        nonlocal seen
        seen += 1
        if seen >= per_topic * len(names):
            enough.set()

    app = (
        plain_app(bootstrap, names, count)
        if variant == "plain"
        else built_app(bootstrap, redis_url, names, count)
    )
    await app.start()
    try:
        await asyncio.wait_for(enough.wait(), CHILD_TIMEOUT_S)
        print(f"consumed {seen}", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await app.stop()


if __name__ == "__main__":
    variant, bootstrap, redis_url, per_topic, *topic_names = sys.argv[1:]
    asyncio.run(serve(variant, bootstrap, redis_url, topic_names, int(per_topic)))
