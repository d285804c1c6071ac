"""The compact dedup layout on a real `redis-server`: bytes per event, listpack encoding, one slot per call.

Memory is measured on a private server (nothing else writes to it) with Redis's default
`hash-max-listpack-entries` (128), so the figure is a property of the layout, not of the load.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from alpha_streaming._settings import DedupSettings
from middlewares._dedup import DeduplicationMiddleware
from middlewares._dedup_store import DedupStore
from middlewares._lease_scripts import CLAIMED, DONE, register_lease_scripts
from tests.support import free_port

EVENTS = 200_000
PER_CALL = 1_000


@pytest.fixture
def private_port() -> Iterator[int]:
    """A `redis-server` of this test alone (no persistence): nothing else changes its memory."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
async def private_redis(private_port: int) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=private_port, socket_connect_timeout=0.2)
    try:
        for _ in range(200):  # until it accepts connections (at most ~10 s)
            try:
                await client.ping()
                break
            except (OSError, aioredis.ConnectionError):
                await asyncio.sleep(0.05)
        await client.config_set("hash-max-listpack-entries", 128)  # Redis's default
        yield client
    finally:
        await client.aclose()


async def test_a_remembered_event_costs_at_most_50_bytes_of_redis_memory(
    private_redis: aioredis.Redis,
) -> None:
    dedup = DeduplicationMiddleware(private_redis, namespace="layout", settings=DedupSettings())
    prefix, store = dedup.key_prefix("g"), dedup.store
    await store.claim(prefix, ["warm-up"], "o")  # loads the script, creates the meta hash
    await store.done(prefix, ["warm-up"], "o")
    before = (await private_redis.info("memory"))["used_memory"]
    for _ in range(EVENTS // PER_CALL):
        ids = [str(uuid.uuid4()) for _ in range(PER_CALL)]
        assert await store.claim(prefix, ids, "o") == [CLAIMED] * PER_CALL
        await store.done(prefix, ids, "o")
    after = (await private_redis.info("memory"))["used_memory"]
    per_event = (after - before) / EVENTS
    print(f"\n{per_event:.1f} bytes of used_memory per remembered event ({EVENTS:,} events)")
    assert per_event <= 50
    keys = [key async for key in private_redis.scan_iter(match="alpha:dedup:*", count=10_000)]
    encodings = {await private_redis.object("encoding", key) for key in keys}
    assert encodings == {b"listpack"}, "every marker hash (and the meta hash) stays compact"
    assert await store.peek(prefix, ids[:3]) == [DONE] * 3


async def test_every_key_of_a_call_is_in_the_groups_hash_slot(
    redis_client: aioredis.Redis, unique: Callable[[str], str]
) -> None:
    namespace = unique("slot")
    script, _renew = register_lease_scripts(redis_client)
    declared: list[list[Any]] = []

    async def recording(keys: list[Any], args: list[Any]) -> Any:
        declared.append(keys)
        return await script(keys, args)

    store = DedupStore(recording, lease_ms=30_000, window_ms=3_600_000)  # type: ignore[arg-type]
    prefix = f"alpha:dedup:{{{namespace}:g}}:"
    ids = [f"e{n}" for n in range(2_000)]  # enough for several shards and two epochs
    await asyncio.gather(store.claim(prefix, ids[:1_000], "o1"), store.claim(prefix, ids[1_000:], "o2"))
    await asyncio.gather(store.done(prefix, ids[:1_000], "o1"), store.done(prefix, ids[1_000:], "o2"))
    slot = key_slot(f"{{{namespace}:g}}".encode())
    assert len(declared) == 2 and {key_slot(k.encode()) for keys in declared for k in keys} == {slot}
    written = [key async for key in redis_client.scan_iter(match=f"alpha:dedup:\\{{{namespace}:g\\}}:*")]
    assert len(written) > 10  # the meta hash and the shards the script named itself
    assert {key_slot(key) for key in written} == {slot}
