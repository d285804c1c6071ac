"""Where the enhanced tier's time goes: `python -m bench.enhanced [--coalesced] [--bare N [--plain]]`.

`profile` runs one variant per mode under pyinstrument with the awaited time of consumer commits
and Redis commands measured; `bare` runs single-message runs with no profiler inside, for an
outside sampler (py-spy). bench/README.md ("Issue 12") has the readings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from bench._common import topics
from bench.enhanced import (
    BATCH,
    BATCH_MESSAGES,
    PARTITIONS,
    SINGLE,
    SINGLE_MESSAGES,
    VARIANT_NAMES,
    count_for,
    measure,
    prefill,
)

__all__ = ("bare", "profile")

CATEGORIES = (
    ("kafka commit (in commit calls)", "commit"),
    ("redis (awaited)", "redis"),
)
LIBRARIES = (
    ("/redis/", "redis-py (client CPU)"),
    ("/aiokafka/", "aiokafka (fetch, commit CPU)"),
    ("/opentelemetry/", "opentelemetry (spans, metrics)"),
    ("/pydantic", "pydantic + JSON (envelope, payload)"),
    ("/json/", "pydantic + JSON (envelope, payload)"),
    ("alpha_streaming/", "pydantic + JSON (envelope, payload)"),
    ("/middlewares/", "our middlewares (own code)"),
    ("/fast_depends/", "faststream + fast_depends"),
    ("/faststream/", "faststream + fast_depends"),
    ("selectors.py", "event loop idle (waiting on sockets)"),
    ("/asyncio/", "asyncio scheduling"),
)


class _Awaited:
    """Wall time spent awaiting consumer commits and Redis commands (patched in for the profile)."""

    def __init__(self) -> None:
        self.seconds = {"commit": 0.0, "redis": 0.0}
        self.calls = {"commit": 0, "redis": 0}

    def wrap(self, owner: Any, name: str, kind: str) -> Callable[[], None]:
        original = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.seconds[kind] += time.perf_counter() - started
                self.calls[kind] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


def _library_shares(session: Any) -> dict[str, float]:
    shares: dict[str, float] = {}
    for stack, seconds in session.frame_records:
        label = "other"
        for frame in reversed(stack):
            path = frame.split("\x00")[1] if "\x00" in frame else ""
            found = next((name for marker, name in LIBRARIES if marker in path), None)
            if found is not None:
                label = found
                break
        shares[label] = shares.get(label, 0.0) + seconds
    return shares


async def profile(bootstrap: str, redis_url: str, variant: str) -> None:
    """One run of `variant` per mode under pyinstrument, with commit and Redis waits timed."""
    from aiokafka import AIOKafkaConsumer
    from pyinstrument import Profiler
    from redis.asyncio import Redis

    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with topics(bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("enhanced-profile")
            await prefill(bootstrap, topic, BATCH_MESSAGES)
            for mode, full in ((SINGLE, SINGLE_MESSAGES), (BATCH, BATCH_MESSAGES)):
                count = count_for(variant, mode, full)
                awaited = _Awaited()
                restore = [
                    awaited.wrap(AIOKafkaConsumer, "commit", "commit"),
                    awaited.wrap(Redis, "execute_command", "redis"),
                ]
                profiler = Profiler(interval=0.001, async_mode="disabled")
                try:
                    rate = await measure(variant, mode, topic, count, bootstrap, redis, profiler=profiler)
                finally:
                    for undo in restore:
                        undo()
                per_msg_ms = 1000 / rate
                name = VARIANT_NAMES[variant]
                print(f"\n[{mode}] {name}, profiled: {rate:,.0f} msg/s = {per_msg_ms:.3f} ms/msg")
                for label, kind in CATEGORIES:
                    seconds, calls = awaited.seconds[kind], awaited.calls[kind]
                    print(
                        f"  {label:<38} {seconds * 1000 / count:8.3f} ms/msg"
                        f"  ({calls:,} calls, {seconds * 1000 / max(calls, 1):.3f} ms each)"
                    )
                session = profiler.last_session
                total = session.duration
                print(
                    f"  sampled wall time by innermost library ({total:.1f} s, profiler overhead included):"
                )
                for label, seconds in sorted(_library_shares(session).items(), key=lambda kv: -kv[1]):
                    print(
                        f"    {label:<38} {100 * seconds / total:5.1f}% {seconds * 1000 / count:7.3f} ms/msg"
                    )
    finally:
        await redis.aclose()


async def bare(bootstrap: str, redis_url: str, variant: str, runs: int) -> None:
    """`runs` single-message runs of `variant`, no profiler inside: for an outside sampler (py-spy)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        async with topics(bootstrap, partitions=PARTITIONS) as new_topic:
            topic = await new_topic("enhanced-bare")
            await prefill(bootstrap, topic, SINGLE_MESSAGES)
            for _ in range(runs):
                count = count_for(variant, SINGLE, SINGLE_MESSAGES)
                rate = await measure(variant, SINGLE, topic, count, bootstrap, redis)
                print(f"[single] {VARIANT_NAMES[variant]}: {rate:,.0f} msg/s")
    finally:
        await redis.aclose()
