"""`DedupStore` on fakeredis running the real Lua script: coalescing, answers, layout, window, migration."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis
from redis.exceptions import ClusterDownError

from alpha_streaming._settings import DedupSettings
from middlewares._dedup import DeduplicationMiddleware
from middlewares._dedup_store import DedupStore, compact_id, lease_key
from middlewares._lease_scripts import CLAIMED, DONE, HELD, register_lease_scripts

PREFIX = "alpha:dedup:{unit:g}:"
WINDOW_MS = 60_000


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now_s: float = 1_800_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def redis() -> Any:
    client = FakeAsyncRedis()
    yield client
    await client.aclose()


async def byte_keys(redis: FakeAsyncRedis) -> list[bytes]:
    keys: list[bytes] = await redis.keys("alpha:dedup:*")  # type: ignore[assignment]  # no decoding
    return keys


def store_on(redis: FakeAsyncRedis, clock: Clock | None = None, lease_ms: int = 30_000) -> DedupStore:
    script, _renew = register_lease_scripts(redis)
    return DedupStore(script, lease_ms=lease_ms, window_ms=WINDOW_MS, clock=clock or Clock())


async def test_a_call_has_a_fixed_number_of_arguments_whatever_its_number_of_events(
    redis: FakeAsyncRedis,
) -> None:
    """Packing a command costs the client per argument: 4 per event made a 500-event batch 2,000."""
    script, _renew = register_lease_scripts(redis)
    sent: list[tuple[list[Any], list[Any]]] = []

    async def recording(keys: list[Any], args: list[Any]) -> Any:
        sent.append((keys, args))
        return await script(keys, args)

    store = DedupStore(recording, lease_ms=30_000, window_ms=WINDOW_MS, clock=Clock())  # type: ignore[arg-type]
    ids = [f"e{n}" for n in range(500)]
    first, second = await asyncio.gather(store.claim(PREFIX, ids, "o1"), store.claim(PREFIX, ["#x"], "o2"))
    assert first == [CLAIMED] * 500 and second == [CLAIMED]
    [(keys, args)] = sent
    assert keys == [PREFIX + "#m"], "the group's meta hash; the script names the leases itself"
    # The head, the compact ids, the event ids, their lengths, then (op, owner, count) per request.
    assert len(args) == 5 + 3 + 3 * 2
    assert args[5] == b"".join(compact_id(i) for i in [*ids, "#x"])
    leases = {key.decode() for key in await byte_keys(redis) if b"#" not in key.removeprefix(PREFIX.encode())}
    assert leases == {lease_key(PREFIX, i) for i in ids}
    assert await redis.get(lease_key(PREFIX, "#x")) == b"o2", "an id like a marker key is moved aside"


async def test_claims_of_one_turn_go_out_in_one_script_call_and_each_gets_its_answers(
    redis: FakeAsyncRedis,
) -> None:
    store = store_on(redis)
    await store.claim(PREFIX, ["done-before"], "o0")
    await store.done(PREFIX, ["done-before"], "o0")
    before = store.calls
    answers = await asyncio.gather(
        *(store.claim(PREFIX, [f"e{n}"], f"o{n}") for n in range(64)),
        store.claim(PREFIX, ["e0"], "other"),  # the same event, another owner: held
        store.claim(PREFIX, ["done-before", "e64"], "o64"),
    )
    assert store.calls - before == 1
    assert answers[:64] == [[CLAIMED]] * 64
    assert answers[64] == [HELD]
    assert answers[65] == [DONE, CLAIMED]
    assert await redis.get(lease_key(PREFIX, "e7")) == b"o7"


async def test_each_group_gets_its_own_call_in_the_same_turn(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    other = "alpha:dedup:{unit:h}:"
    answers = await asyncio.gather(store.claim(PREFIX, ["e"], "o1"), store.claim(other, ["e"], "o2"))
    assert list(answers) == [[CLAIMED], [CLAIMED]]
    assert store.calls == 2, "one call per hash slot"


async def test_done_and_release_of_one_turn_share_a_call_and_take_effect(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    await asyncio.gather(store.claim(PREFIX, ["a"], "o1"), store.claim(PREFIX, ["b"], "o2"))
    calls = store.calls
    await asyncio.gather(store.done(PREFIX, ["a"], "o1"), store.release(PREFIX, ["b"], "o2"))
    assert store.calls - calls == 1
    assert await store.peek(PREFIX, ["a", "b"]) == [DONE, CLAIMED]
    assert await redis.exists(lease_key(PREFIX, "a"), lease_key(PREFIX, "b")) == 0


async def test_an_outage_error_reaches_every_waiter_of_the_call() -> None:
    async def refused(keys: Any, args: Any) -> Any:
        raise ClusterDownError("The cluster is down")

    store = DedupStore(refused, lease_ms=1_000, window_ms=WINDOW_MS)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(store.claim(PREFIX, [f"e{n}"], "o") for n in range(5)),
        store.done(PREFIX, ["x"], "o"),
        return_exceptions=True,
    )
    assert store.calls == 1
    assert all(isinstance(r, ClusterDownError) for r in results)


async def test_a_cancelled_caller_does_not_strand_the_others(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    cancelled = asyncio.ensure_future(store.claim(PREFIX, ["a"], "o1"))
    kept = asyncio.ensure_future(store.claim(PREFIX, ["b"], "o2"))
    await asyncio.sleep(0)  # both requests are queued; the flush is scheduled
    cancelled.cancel()
    assert await kept == [CLAIMED]
    assert cancelled.cancelled()


async def test_done_markers_are_compact_hash_fields_under_the_groups_hash_tag(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    ids = [f"event-{n}" for n in range(300)]
    await store.claim(PREFIX, ids, "o")
    await store.done(PREFIX, ids, "o")
    keys = [k.decode() for k in await byte_keys(redis)]
    assert all(k.startswith(PREFIX + "#") for k in keys), "no lease left, only markers and the meta hash"
    fields = set()
    for key in keys:
        if not key.endswith("#m"):
            fields |= set(await redis.hkeys(key))
            assert await redis.hlen(key) <= 128, "small enough to stay a listpack"
    assert fields == {compact_id(i) for i in ids}
    assert all(len(f) == 16 for f in fields)


async def test_a_bucket_that_outgrows_its_shards_opens_a_new_epoch_and_both_are_read(
    redis: FakeAsyncRedis,
) -> None:
    store = store_on(redis)
    first, second = [f"a{n}" for n in range(256)], [f"b{n}" for n in range(256)]
    for ids in (first, second):
        await store.claim(PREFIX, ids, "o")
        await store.done(PREFIX, ids, "o")
    meta: dict[bytes, bytes] = await redis.hgetall(PREFIX + "#m")  # type: ignore[assignment]
    [spec] = [v for k, v in meta.items() if k.startswith(b"s")]
    assert spec == b"4,16", "4 shards hold 256 ids; the next ids go to an epoch of 16"
    assert await store.claim(PREFIX, [*first, *second, "new"], "o2") == [DONE] * 512 + [CLAIMED]


async def test_an_event_is_remembered_for_the_window_and_forgotten_after_it(redis: FakeAsyncRedis) -> None:
    clock = Clock()
    store = store_on(redis, clock)
    await store.claim(PREFIX, ["e"], "o")
    await store.done(PREFIX, ["e"], "o")
    clock.now_s += WINDOW_MS / 1000  # a full window later: still a duplicate
    assert await store.peek(PREFIX, ["e"]) == [DONE]
    clock.now_s += store.span_ms / 1000 + 0.001  # its bucket left the window
    assert await store.claim(PREFIX, ["e"], "o2") == [CLAIMED]


async def test_marker_hashes_expire_with_their_bucket_one_window_after_it_ends(redis: FakeAsyncRedis) -> None:
    clock = Clock()
    store = store_on(redis, clock)
    await store.claim(PREFIX, ["e"], "o")
    await store.done(PREFIX, ["e"], "o")
    bucket_end_ms = (int(clock.now_s * 1000) // store.span_ms + 1) * store.span_ms
    expected = bucket_end_ms + WINDOW_MS - int(clock.now_s * 1000)
    keys = await byte_keys(redis)
    [shard] = [k for k in keys if not k.endswith(b"#m")]
    assert expected - 1_000 < await redis.pttl(shard) <= expected


async def test_a_done_marker_of_the_layout_before_is_still_read_as_done(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    await redis.set(PREFIX + "old-event", "done", px=60_000)  # written by the per-event-key layout
    assert await store.claim(PREFIX, ["old-event", "new-event"], "o") == [DONE, CLAIMED]
    assert await redis.get(PREFIX + "old-event") == b"done", "left to expire on its own"


async def test_an_id_shaped_like_a_marker_key_gets_a_lease_key_of_its_own(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    await store.claim(PREFIX, ["#m"], "o")
    assert lease_key(PREFIX, "#m") == PREFIX + "##m"
    assert await redis.get(PREFIX + "##m") == b"o"
    await store.done(PREFIX, ["#m"], "o")
    assert await store.peek(PREFIX, ["#m"]) == [DONE]


async def test_done_leaves_another_owners_lease_alone(redis: FakeAsyncRedis) -> None:
    store = store_on(redis)
    await store.claim(PREFIX, ["e"], "new-owner")  # ours expired; another consumer took it
    await store.done(PREFIX, ["e"], "old-owner")
    assert await store.peek(PREFIX, ["e"]) == [HELD]
    assert await redis.get(lease_key(PREFIX, "e")) == b"new-owner"


async def test_events_older_than_the_window_claimed_as_new_are_counted(redis: FakeAsyncRedis) -> None:
    from datetime import UTC, datetime, timedelta

    from alpha_streaming._envelope import EventEnvelope
    from middlewares._dedup_runtime import DedupRuntime

    dedup = DeduplicationMiddleware(redis, namespace="unit", settings=DedupSettings(window_s=60))
    old = EventEnvelope.create(type="t", data={}, source="s").model_copy(
        update={"ts": datetime.now(UTC) - timedelta(seconds=61)}
    )
    new = EventEnvelope.create(type="t", data={}, source="s")
    runtime = DedupRuntime(None, context=None, config=dedup)  # type: ignore[arg-type]
    runtime._note_beyond_window([old, new])
    assert dedup.beyond_window == 1
