"""`DeduplicationMiddleware` logic under TestKafkaBroker, against the real Redis.

Each test uses its own namespace, so keys never collide across tests or runs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker, TestKafkaBroker
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from alpha_streaming.envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming.errors import ConfigError, RedeliveryRequested
from alpha_streaming.settings import DedupSettings
from middlewares._state import MessageState, Outcome, state_of
from middlewares.dedup import DeduplicationMiddleware
from middlewares.envelope import CurrentEnvelopes, EnvelopeMiddleware

TOPIC = "paper.orders.filled"
GROUP = "risk.fills"


class _StateSpy(BaseMiddleware):
    """Outermost: keeps the per-message state the inner middlewares recorded."""

    states: list[MessageState]

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        try:
            return await call_next(msg)
        finally:
            _StateSpy.states.append(state_of(msg))


@pytest.fixture
def states() -> list[MessageState]:
    _StateSpy.states = []
    return _StateSpy.states


@pytest.fixture
def namespace(unique: Callable[[str], str]) -> str:
    return unique("unit")


def event(n: int = 0) -> EventEnvelope:
    return EventEnvelope.create(type="order.filled", data={"n": n}, source="engine")


def key(namespace: str, event_id: str, group: str = GROUP) -> str:
    return f"alpha:dedup:{namespace}:{group}:{event_id}"


def stack(dedup: DeduplicationMiddleware) -> KafkaBroker:
    return KafkaBroker(middlewares=[_StateSpy, EnvelopeMiddleware(source="svc"), dedup])


def dead_redis() -> aioredis.Redis:
    """A client for a port nobody listens on: every call fails like a Redis outage."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No client-side retries: the middleware's own outage policy is what is under test.
    return aioredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )


@pytest.mark.parametrize(
    "options",
    [
        {"namespace": ""},
        {"namespace": "a:b"},
        {"namespace": "n", "lease_ttl_s": 0},
        {"namespace": "n", "lease_ttl_s": 10, "done_ttl_s": 5},
        {"namespace": "n", "on_redis_outage": "ignore"},
        {"namespace": "n", "outage_pause_s": 600},
    ],
)
def test_config_is_validated(redis_client: aioredis.Redis, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DeduplicationMiddleware(redis_client, **options)


def test_from_settings(redis_client: aioredis.Redis) -> None:
    settings = DedupSettings(lease_ttl_s=12, done_ttl_s=3600, local_cache_size=7, on_redis_outage="fail_open")
    dedup = DeduplicationMiddleware.from_settings(redis_client, namespace="svc", settings=settings)
    assert (dedup.lease_ms, dedup.done_ms, dedup.cache.maxsize, dedup.on_redis_outage) == (
        12_000,
        3_600_000,
        7,
        "fail_open",
    )


async def test_the_same_event_twice_runs_once_and_publishes_nothing_the_second_time(
    redis_client: aioredis.Redis, namespace: str, states: list[MessageState]
) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace, done_ttl_s=3600))
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
    assert [s.outcome for s in states if s.envelope == first] == [None, Outcome.DEDUPLICATED]
    assert await redis_client.get(key(namespace, first.id)) == b"done"
    ttl_ms = await redis_client.pttl(key(namespace, first.id))
    assert 3_590_000 < ttl_ms <= 3_600_000


async def test_dedup_is_per_consumer_group(redis_client: aioredis.Redis, namespace: str) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace))
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
    assert await redis_client.get(key(namespace, sent.id, "g-risk")) == b"done"
    assert await redis_client.get(key(namespace, sent.id, "g-audit")) == b"done"


async def test_a_failed_handler_releases_its_lease_so_the_event_runs_again(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace))
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
        assert await redis_client.exists(key(namespace, sent.id)) == 0
        await br.publish(sent, TOPIC)
    assert len(calls) == 2
    assert await redis_client.get(key(namespace, sent.id)) == b"done"


async def test_a_duplicate_waits_for_the_in_flight_original_and_is_not_run(
    redis_client: aioredis.Redis, namespace: str, states: list[MessageState]
) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace, lease_ttl_s=5))
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    sent = event()
    k = key(namespace, sent.id)
    await redis_client.set(k, "another-consumer", px=5_000)  # the original is in flight elsewhere

    async def original_finishes() -> None:
        await asyncio.sleep(0.3)
        await redis_client.set(k, "done", px=60_000)

    async with TestKafkaBroker(broker) as br:
        finisher = asyncio.create_task(original_finishes())
        await br.publish(sent, TOPIC)
        await finisher
    assert calls == []
    assert states[-1].outcome is Outcome.DEDUPLICATED


async def test_a_duplicate_runs_once_the_in_flight_original_gave_up(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace, lease_ttl_s=5))
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    sent = event()
    k = key(namespace, sent.id)
    await redis_client.set(k, "another-consumer", px=5_000)

    async def original_fails() -> None:
        await asyncio.sleep(0.3)
        await redis_client.delete(k)  # released on failure

    async with TestKafkaBroker(broker) as br:
        releaser = asyncio.create_task(original_fails())
        await br.publish(sent, TOPIC)
        await releaser
    assert calls == [1]
    assert await redis_client.get(k) == b"done"


async def test_a_lease_held_longer_than_the_wait_means_redelivery_not_a_second_run(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace, lease_ttl_s=0.4))
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
    redis_client: aioredis.Redis, namespace: str
) -> None:
    broker = stack(DeduplicationMiddleware(redis_client, namespace=namespace, lease_ttl_s=0.3))
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
    assert await redis_client.get(k) == b"done"


async def test_the_local_cache_answers_hot_duplicates_without_redis(
    redis_client: aioredis.Redis, namespace: str, states: list[MessageState]
) -> None:
    cached = stack(DeduplicationMiddleware(redis_client, namespace=namespace))
    uncached = stack(DeduplicationMiddleware(redis_client, namespace=namespace, local_cache_size=0))
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
        await redis_client.delete(key(namespace, sent.id))  # Redis forgets
        await c.publish(sent, TOPIC)  # the cache still knows
        await u.publish(sent, TOPIC)  # nothing remembers: runs again
    assert calls == ["cached", "uncached"]
    assert [s.outcome for s in states] == [None, Outcome.DEDUPLICATED, Outcome.DEDUPLICATED, None]


async def test_batch_hands_the_handler_only_new_events_checked_in_one_round_trip(
    redis_client: aioredis.Redis, namespace: str, states: list[MessageState]
) -> None:
    dedup = DeduplicationMiddleware(redis_client, namespace=namespace)
    broker = stack(dedup)
    batches: list[tuple[list[dict[str, Any]], list[str]]] = []

    @broker.subscriber(TOPIC, group_id=GROUP, batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(bodies: list[dict[str, Any]], envelopes: CurrentEnvelopes) -> None:
        batches.append((bodies, [e.id for e in envelopes]))

    e0, e1, e2 = event(0), event(1), event(2)
    round_trips: list[int] = []
    claim = dedup.claim

    async def counting_claim(keys: list[str], args: list[Any]) -> Any:
        round_trips.append(len(keys))
        return await claim(keys, args)

    dedup.claim = counting_claim  # type: ignore[assignment]
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(e0, e1, topic=TOPIC)
        await br.publish_batch(e1, e2, e2, topic=TOPIC)  # e1 seen, e2 twice in one batch
        await br.publish_batch(e0, e2, topic=TOPIC)  # all seen: handler not called
    assert batches == [([{"n": 0}, {"n": 1}], [e0.id, e1.id]), ([{"n": 2}], [e2.id])]
    assert round_trips == [2, 1]  # one script call per batch; the cache answered the rest
    assert states[1].batch_envelopes == (e2,)
    assert states[2].outcome is Outcome.DEDUPLICATED
    for e in (e0, e1, e2):
        assert await redis_client.get(key(namespace, e.id)) == b"done"


async def test_without_envelope_middleware_the_event_id_header_is_the_key(
    redis_client: aioredis.Redis, namespace: str
) -> None:
    broker = KafkaBroker(middlewares=[DeduplicationMiddleware(redis_client, namespace=namespace)])
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
    assert await redis_client.get(key(namespace, "evt-1")) == b"done"


async def test_redis_outage_pauses_then_asks_for_redelivery(
    namespace: str, states: list[MessageState]
) -> None:
    broker = stack(DeduplicationMiddleware(dead_redis(), namespace=namespace, outage_pause_s=0.5))
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    async with TestKafkaBroker(broker) as br:
        with pytest.raises(RedeliveryRequested, match="Redis unavailable"):
            await br.publish(event(), TOPIC)
    assert calls == []  # nothing runs without dedup
    assert states[-1].redis_outage == "paused"
    assert states[-1].outcome is None  # error routing turns RedeliveryRequested into REDELIVER


async def test_redis_outage_fail_open_runs_the_handler_and_says_so(
    namespace: str, states: list[MessageState]
) -> None:
    broker = stack(DeduplicationMiddleware(dead_redis(), namespace=namespace, on_redis_outage="fail_open"))
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    async with TestKafkaBroker(broker) as br:
        await br.publish(event(), TOPIC)
    assert calls == [1]
    assert states[-1].redis_outage == "failed_open"
