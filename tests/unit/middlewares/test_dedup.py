"""`DeduplicationMiddleware` without a Redis server: configuration, and what a Redis outage does.

The outage tests point the client at a port nobody listens on. The dedup logic against the real
Redis is in tests/integration/middlewares/test_dedup_with_redis.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, TestKafkaBroker
from redis.asyncio import Redis
from redis.exceptions import ClusterDownError

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import ConfigError, RedeliveryRequested
from alpha_streaming._settings import DedupSettings
from middlewares._dedup import DeduplicationMiddleware
from middlewares._envelope import EnvelopeMiddleware
from tests.support import Spy, dead_redis

TOPIC = "paper.orders.filled"
GROUP = "risk.fills"
NAMESPACE = "unit-outage"


def event(n: int = 0) -> EventEnvelope:
    return EventEnvelope.create(type="order.filled", data={"n": n}, source="engine")


def stack(spy: Spy, dedup: DeduplicationMiddleware) -> KafkaBroker:
    return KafkaBroker(middlewares=[spy, EnvelopeMiddleware(source="svc"), dedup])


@pytest.mark.parametrize("namespace", ["", "a:b"])
def test_the_namespace_must_be_a_name_without_a_colon(namespace: str) -> None:
    with pytest.raises(ConfigError, match="namespace"):
        DeduplicationMiddleware(Redis(), namespace=namespace)


@pytest.mark.parametrize(
    "options",
    [
        {"lease_ttl_s": 0},
        {"lease_ttl_s": 10, "done_ttl_s": 5},
        {"on_redis_outage": "ignore"},
        {"outage_pause_s": 600},
    ],
)
def test_dedup_settings_are_validated(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DedupSettings(**options)


def test_settings_flow_into_the_middleware() -> None:
    settings = DedupSettings(
        lease_ttl_s=12, done_ttl_s=3600, local_cache_size=7, on_redis_outage="fail_open", outage_pause_s=9
    )
    dedup = DeduplicationMiddleware(Redis(), namespace="svc", settings=settings)
    assert (dedup.lease_ms, dedup.done_ms, dedup.cache.maxsize, dedup.on_redis_outage) == (
        12_000,
        3_600_000,
        7,
        "fail_open",
    )
    assert dedup.outage_pause_s == 9


async def test_redis_outage_pauses_then_asks_for_redelivery(spy: Spy) -> None:
    broker = stack(
        spy,
        DeduplicationMiddleware(
            dead_redis(), namespace=NAMESPACE, settings=DedupSettings(outage_pause_s=0.5)
        ),
    )
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    async with TestKafkaBroker(broker) as br:
        with pytest.raises(RedeliveryRequested, match="Redis unavailable"):
            await br.publish(event(), TOPIC)
    assert calls == []  # nothing runs without dedup
    assert spy.states[-1].redis_outage == "paused"
    assert spy.states[-1].outcome is None  # error routing turns RedeliveryRequested into REDELIVER


async def test_redis_outage_fail_open_runs_the_handler_and_says_so(spy: Spy) -> None:
    broker = stack(
        spy,
        DeduplicationMiddleware(
            dead_redis(), namespace=NAMESPACE, settings=DedupSettings(on_redis_outage="fail_open")
        ),
    )
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    async with TestKafkaBroker(broker) as br:
        await br.publish(event(), TOPIC)
    assert calls == [1]
    assert spy.states[-1].redis_outage == "failed_open"


class _ClusterDown:
    """A Redis Cluster that lost a master: every script call answers CLUSTERDOWN."""

    def register_script(self, script: str) -> Any:
        async def refused(keys: Any, args: Any) -> Any:
            raise ClusterDownError("The cluster is down")

        return refused


async def test_a_cluster_down_answer_is_an_outage_not_a_handler_failure(spy: Spy) -> None:
    dedup = DeduplicationMiddleware(
        _ClusterDown(),  # type: ignore[arg-type]
        namespace=NAMESPACE,
        settings=DedupSettings(outage_pause_s=0.3),
    )
    broker = stack(spy, dedup)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id=GROUP, ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)

    async with TestKafkaBroker(broker) as br:
        with pytest.raises(RedeliveryRequested, match="Redis unavailable"):
            await br.publish(event(), TOPIC)
    assert calls == []  # paused and redelivered, never retried into the DLQ without dedup
    assert spy.states[-1].redis_outage == "paused"
