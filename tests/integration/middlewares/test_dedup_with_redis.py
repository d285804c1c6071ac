"""`DeduplicationMiddleware` logic under TestKafkaBroker, against the real Redis.

Each test uses its own namespace, so keys never collide across tests or runs. The in-memory
checks (configuration, Redis outage) are in tests/unit/middlewares/test_dedup.py; dedup on the
real Kafka in test_dedup_real.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, TestKafkaBroker

from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import RedeliveryRequested
from alpha_streaming._settings import DedupSettings
from middlewares._dedup import DeduplicationMiddleware
from middlewares._envelope import CurrentEnvelopes, EnvelopeMiddleware
from middlewares._lease_scripts import HELD
from middlewares._state import Outcome
from tests.support import Spy

TOPIC = "paper.orders.filled"
GROUP = "risk.fills"


@pytest.fixture
def namespace(unique: Callable[[str], str]) -> str:
    return unique("unit")


def event(n: int = 0) -> EventEnvelope:
    return EventEnvelope.create(type="order.filled", data={"n": n}, source="engine")


def key(namespace: str, event_id: str, group: str = GROUP) -> str:
    """The event's lease key (also where the layout before compact markers kept `done`)."""
    return f"alpha:dedup:{{{namespace}:{group}}}:{event_id}"


async def forget(redis: aioredis.Redis, namespace: str, group: str = GROUP) -> None:
    """Delete every dedup key of the group: leases and done markers."""
    keys = await redis.keys(f"alpha:dedup:\\{{{namespace}:{group}\\}}:*")
    assert keys
    await redis.delete(*keys)


def stack(spy: Spy, dedup: DeduplicationMiddleware) -> KafkaBroker:
    return KafkaBroker(middlewares=[spy, EnvelopeMiddleware(source="svc"), dedup])


def found_held(dedup: DeduplicationMiddleware) -> asyncio.Event:
    """Set once a claim of `dedup` found a lease held by another consumer (it then waits)."""
    held = asyncio.Event()
    claim = dedup.store.claim

    async def claiming(prefix: str, event_ids: list[str], owner: str) -> list[int]:
        answers = await claim(prefix, event_ids, owner)
        if HELD in answers:
            held.set()
        return answers

    dedup.store.claim = claiming  # type: ignore[method-assign]
    return held


async def test_the_same_event_twice_runs_once_and_publishes_nothing_the_second_time(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace, settings=DedupSettings(window_s=3600))
    broker = stack(spy, dedup)
    calls: list[dict[str, Any]] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    @broker.publisher("paper.orders.accepted")
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(body)
        return {"accepted": body["n"]}

    downstream: list[Any] = []

    @broker.subscriber("paper.orders.accepted", group_id="audit", ack_policy=AckPolicy.MANUAL)
    async def audit(body: dict[str, Any]) -> None:
        downstream.append(body)

    first = event(1)
    async with TestKafkaBroker(broker) as br:
        await br.publish(first, TOPIC)
        await br.publish(first, TOPIC)  # the duplicate's AckMessage is suppressed, not raised here
    assert calls == [{"n": 1}]
    assert downstream == [{"accepted": 1}]  # the duplicate published nothing, not even b""
    assert [s.outcome for s in spy.states if s.envelope == first] == [None, Outcome.DEDUPLICATED]
    assert await dedup.marker(GROUP, first.id) == "done"
    assert await redis_client.exists(key(namespace, first.id)) == 0, "the lease is gone"


async def test_dedup_is_per_consumer_group(redis_client: aioredis.Redis, namespace: str, spy: Spy) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace)
    broker = stack(spy, dedup)
    calls: list[str] = []

    @broker.subscriber(TOPIC, group_id="g-risk", ack_policy=AckPolicy.MANUAL)
    async def risk(body: dict[str, Any]) -> None:
        calls.append("risk")

    @broker.subscriber(TOPIC, group_id="g-audit", ack_policy=AckPolicy.MANUAL)
    async def audit(body: dict[str, Any]) -> None:
        calls.append("audit")

    sent = event()
    async with TestKafkaBroker(broker) as br:
        await br.publish(sent, TOPIC)
        await br.publish(sent, TOPIC)
    assert sorted(calls) == ["audit", "risk"]
    assert await dedup.marker("g-risk", sent.id) == "done"
    assert await dedup.marker("g-audit", sent.id) == "done"
    assert await dedup.marker("g-other", sent.id) is None


async def test_a_failed_handler_releases_its_lease_so_the_event_runs_again(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace)
    broker = stack(spy, dedup)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    sent = event()
    async with TestKafkaBroker(broker) as br:
        with pytest.raises(RuntimeError, match="boom"):
            await br.publish(sent, TOPIC)
        assert await dedup.marker(GROUP, sent.id) is None, "released, not done"
        await br.publish(sent, TOPIC)
    assert len(calls) == 2
    assert await dedup.marker(GROUP, sent.id) == "done"


async def test_a_duplicate_waits_for_the_in_flight_original_and_is_not_run(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace, settings=DedupSettings(lease_ttl_s=5))
    broker = stack(spy, dedup)
    waiting = found_held(dedup)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    sent = event()
    k = key(namespace, sent.id)
    await redis_client.set(k, "another-consumer", px=5_000)  # the original is in flight elsewhere

    async def original_finishes() -> None:
        await waiting.wait()  # the duplicate found the lease held and waits for it
        await redis_client.set(k, "done", px=60_000)  # as the layout before compact markers did

    async with TestKafkaBroker(broker) as br:
        finisher = asyncio.create_task(original_finishes())
        await br.publish(sent, TOPIC)
        await finisher
    assert calls == []
    assert spy.states[-1].outcome is Outcome.DEDUPLICATED


async def test_a_duplicate_runs_once_the_in_flight_original_gave_up(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace, settings=DedupSettings(lease_ttl_s=5))
    broker = stack(spy, dedup)
    waiting = found_held(dedup)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    sent = event()
    k = key(namespace, sent.id)
    await redis_client.set(k, "another-consumer", px=5_000)

    async def original_fails() -> None:
        await waiting.wait()  # the duplicate found the lease held and waits for it
        await redis_client.delete(k)  # released on failure

    async with TestKafkaBroker(broker) as br:
        releaser = asyncio.create_task(original_fails())
        await br.publish(sent, TOPIC)
        await releaser
    assert calls == [1]
    assert await dedup.marker(GROUP, sent.id) == "done"


async def test_a_lease_held_longer_than_the_wait_means_redelivery_not_a_second_run(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    broker = stack(
        spy,
        DeduplicationMiddleware(redis_client, namespace=namespace, settings=DedupSettings(lease_ttl_s=0.4)),
    )
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    sent = event()
    await redis_client.set(key(namespace, sent.id), "slow-consumer", px=30_000)  # it keeps renewing
    async with TestKafkaBroker(broker) as br:
        with pytest.raises(RedeliveryRequested, match="another consumer"):
            await br.publish(sent, TOPIC)
    assert calls == []
    assert await redis_client.get(key(namespace, sent.id)) == b"slow-consumer"


async def test_the_lease_is_renewed_while_a_slow_handler_runs(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    settings = DedupSettings(lease_ttl_s=0.3)
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace, settings=settings)
    broker = stack(spy, dedup)
    sent = event()
    k = key(namespace, sent.id)
    observed: list[tuple[bytes | None, int]] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        for _ in range(5):  # 1 s in all: more than three lease lifetimes
            await asyncio.sleep(0.2)
            observed.append((await redis_client.get(k), await redis_client.pttl(k)))

    async with TestKafkaBroker(broker) as br:
        await br.publish(sent, TOPIC)
    values = {value for value, _ in observed}
    assert len(values) == 1 and values != {None} and values != {b"done"}  # still our lease
    assert all(0 < ttl <= 300 for _, ttl in observed)
    assert await dedup.marker(GROUP, sent.id) == "done"


async def test_the_local_cache_answers_hot_duplicates_without_redis(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    cached = stack(spy, DeduplicationMiddleware(redis_client, namespace=namespace))
    uncached = stack(
        spy,
        DeduplicationMiddleware(
            redis_client, namespace=namespace, settings=DedupSettings(local_cache_size=0)
        ),
    )
    calls: list[str] = []

    @cached.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def a(body: dict[str, Any]) -> None:
        calls.append("cached")

    @uncached.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def b(body: dict[str, Any]) -> None:
        calls.append("uncached")

    sent = event()
    async with TestKafkaBroker(cached) as c, TestKafkaBroker(uncached) as u:
        await c.publish(sent, TOPIC)
        await u.publish(sent, TOPIC)  # Redis says done
        await forget(redis_client, namespace)  # Redis forgets
        await c.publish(sent, TOPIC)  # the cache still knows
        await u.publish(sent, TOPIC)  # nothing remembers: runs again
    assert calls == ["cached", "uncached"]
    assert [s.outcome for s in spy.states] == [None, Outcome.DEDUPLICATED, Outcome.DEDUPLICATED, None]


async def test_batch_hands_the_handler_only_new_events_checked_in_one_round_trip(
    redis_client: aioredis.Redis, namespace: str, spy: Spy
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace)
    broker = stack(spy, dedup)
    batches: list[tuple[list[dict[str, Any]], list[str]]] = []

    @broker.subscriber(TOPIC, group_id=GROUP, batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(bodies: list[dict[str, Any]], envelopes: CurrentEnvelopes) -> None:
        batches.append((bodies, [e.id for e in envelopes]))

    e0, e1, e2 = event(0), event(1), event(2)
    round_trips: list[int] = []
    claim = dedup.store.claim

    async def counting_claim(prefix: str, event_ids: list[str], owner: str) -> list[int]:
        round_trips.append(len(event_ids))
        return await claim(prefix, event_ids, owner)

    dedup.store.claim = counting_claim  # type: ignore[method-assign]
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(e0, e1, topic=TOPIC)
        await br.publish_batch(e1, e2, e2, topic=TOPIC)  # e1 seen, e2 twice in one batch
        await br.publish_batch(e0, e2, topic=TOPIC)  # all seen: handler not called
    assert batches == [([{"n": 0}, {"n": 1}], [e0.id, e1.id]), ([{"n": 2}], [e2.id])]
    assert round_trips == [2, 1]  # one script call per batch; the cache answered the rest
    assert spy.states[1].batch_envelopes == (e2,)
    assert spy.states[2].outcome is Outcome.DEDUPLICATED
    for e in (e0, e1, e2):
        assert await dedup.marker(GROUP, e.id) == "done"


async def test_without_envelope_middleware_the_event_id_header_is_the_key(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace)
    broker = KafkaBroker(middlewares=[dedup])
    calls: list[Any] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(body)

    async with TestKafkaBroker(broker) as br:
        await br.publish({"a": 1}, TOPIC, headers={EnvelopeHeaders.ID: "evt-1"})
        await br.publish({"a": 1}, TOPIC, headers={EnvelopeHeaders.ID: "evt-1"})
        await br.publish({"b": 2}, TOPIC)  # no id at all: passes through, undeduplicated
        await br.publish({"b": 2}, TOPIC)
    assert calls == [{"a": 1}, {"b": 2}, {"b": 2}]
    assert await dedup.marker(GROUP, "evt-1") == "done"
