"""`EnhancedTier`: the middlewares' order, the two-line wiring, the startup check, the lifecycle,
and how `Settings` flow into the tier.

In memory: TestKafkaBroker and TestApp run the app's real hooks. TestKafkaBroker starts no
consumer, so a rebalance is simulated by calling a subscriber's listener the way aiokafka would,
and the consumer that commits is a mock. Redis clients here are never connected (they only turn
dedup on; nothing here publishes through dedup). The real rebalance is in
tests/integration/middlewares/test_coalesced_commits_real.py.
"""

from __future__ import annotations

import socket
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from faststream import AckPolicy, FastStream, TestApp
from faststream.kafka import KafkaBroker, KafkaRouter, TestKafkaBroker
from opentelemetry.sdk.metrics import MeterProvider
from redis.asyncio import Redis

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import (
    ConsumerSettings,
    DedupSettings,
    MetricsSettings,
    RedpandaSettings,
    RetrySettings,
    Settings,
)
from middlewares import (
    DeduplicationMiddleware,
    EnhancedTier,
    EnvelopeMiddleware,
    ErrorRoutingMiddleware,
    MetricsMiddleware,
    OutputsMiddleware,
    RetryPolicy,
    enhanced_stack,
)
from middlewares._retry import Budget
from middlewares._tier import AUTO_COMMIT_EVERY
from tests.support import RecordingSink, Spy, free_port, mock_consumer

SERVICE = "risk-manager"
FILLS, ORDERS = "paper.orders.filled", "paper.orders.placed"


def _record(topic: str, partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, b"{}", None, 0, 2, [])


def _consumer(*partitions: TopicPartition, log: list[str] | None = None) -> MagicMock:
    consumer = MagicMock(commit=AsyncMock(), assignment=MagicMock(return_value=set(partitions)))
    if log is not None:
        consumer.commit.side_effect = lambda offsets: log.append(f"commit {sorted(offsets.values())}")
    return consumer


class _UserListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """A listener of the user's own, on one subscriber."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.log.append(f"user revoked {sorted(tp.partition for tp in revoked)}")

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:  # a plain method works too
        self.log.append(f"user assigned {sorted(tp.partition for tp in assigned)}")


def _names(middlewares: tuple[Any, ...]) -> list[type]:
    return [type(m) for m in middlewares]


# ---------------------------------------------------------------- the middlewares


async def test_the_middlewares_in_their_one_order_with_redis_and_metrics() -> None:
    tier = EnhancedTier(SERVICE, redis=Redis(), meter_provider=MeterProvider())
    assert _names(tier.middlewares) == [
        MetricsMiddleware,
        ErrorRoutingMiddleware,
        EnvelopeMiddleware,
        DeduplicationMiddleware,
        type(tier.pipeline.gate),
        OutputsMiddleware,
    ]
    metrics, routing, _, dedup, gate, _ = tier.middlewares
    assert (metrics, routing, dedup, gate) == (tier.metrics, tier.routing, tier.dedup, tier.pipeline.gate)
    await tier.close()


def test_without_redis_there_is_no_dedup_and_without_metrics_no_metrics() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    assert _names(tier.middlewares) == [
        ErrorRoutingMiddleware,
        EnvelopeMiddleware,
        type(tier.pipeline.gate),
        OutputsMiddleware,
    ]
    assert (tier.metrics, tier.dedup) == (None, None)
    disabled = EnhancedTier(SERVICE, redis=Redis(), metrics=False, dedup=DedupSettings(enabled=False))
    assert _names(disabled.middlewares) == _names(tier.middlewares), "dedup disabled despite a client"


async def test_enhanced_stack_is_the_tiers_middlewares() -> None:
    stack = enhanced_stack(service=SERVICE, redis=Redis(), meter_provider=MeterProvider(), commit_every=50)
    assert _names(stack) == _names(EnhancedTier(SERVICE, redis=Redis(), metrics=True).middlewares)
    assert stack[1].commit_every == 50
    assert _names(enhanced_stack(service=SERVICE, metrics=False)) == [
        ErrorRoutingMiddleware,
        EnvelopeMiddleware,
        type(EnhancedTier(SERVICE).pipeline.gate),
        OutputsMiddleware,
    ]
    stack[0].shutdown()


def test_the_service_name_is_required() -> None:
    with pytest.raises(ConfigError, match="service name"):
        EnhancedTier("", metrics=False)
    with pytest.raises(ConfigError, match="service name"):
        enhanced_stack(service="")


def test_broker_carries_the_tier_inside_outer_middlewares_and_defaults_to_manual_acks() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    outer = Spy()
    broker = tier.broker(RedpandaSettings(), outer=(outer,), graceful_timeout=3.0)

    @broker.subscriber(FILLS, group_id="g")
    async def default(body: Any) -> None: ...

    @broker.subscriber(ORDERS, group_id="g", ack_policy=AckPolicy.ACK)
    async def own_policy(body: Any) -> None: ...

    assert tuple(broker.middlewares) == (outer, *tier.middlewares)
    policies = {sub.topic_names[0]: sub.ack_policy for sub in broker.subscribers}  # type: ignore[attr-defined]
    assert policies == {FILLS: AckPolicy.MANUAL, ORDERS: AckPolicy.ACK}
    assert tier.carried_by(broker)
    assert not tier.carried_by(KafkaBroker())


async def test_a_message_through_the_tiers_broker_is_handled_and_committed() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    broker = tier.broker()
    handled: list[dict[str, Any]] = []

    @broker.subscriber(FILLS, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        handled.append(body)

    app = tier.install(FastStream(broker))
    async with TestKafkaBroker(broker), TestApp(app):
        consumer = mock_consumer(broker, FILLS)
        await broker.publish(EventEnvelope.create(type="Fill", data={"qty": 2}, source="t"), FILLS)
    assert handled == [{"qty": 2}]
    consumer.commit.assert_awaited_once_with({TopicPartition(FILLS, 0): 1})


# ---------------------------------------------------------------- install: listener and startup check


async def test_install_gives_every_subscriber_the_tier_listener_chained_with_the_users_own() -> None:
    tier = EnhancedTier(SERVICE, redis=Redis(), metrics=False)  # commits go out in the background
    broker = tier.broker()
    log: list[str] = []

    @broker.subscriber(FILLS, group_id="g")
    async def fills(body: Any) -> None: ...

    @broker.subscriber(ORDERS, group_id="g", listener=_UserListener(log))
    async def orders(body: Any) -> None: ...

    app = tier.install(FastStream(broker))
    async with TestKafkaBroker(broker), TestApp(app):
        listeners = {sub.topic_names[0]: sub._listener for sub in broker.subscribers}  # type: ignore[attr-defined]
        assert listeners[FILLS] is tier.listener

        for topic in (FILLS, ORDERS):
            partition = TopicPartition(topic, 0)
            consumer = _consumer(partition, log=log)
            before = len(log)
            await _finished(tier.routing.commits, consumer, (_record(topic, 0, 6),))  # waiting in the window
            assert len(log) == before
            await listeners[topic].on_partitions_revoked({partition})
            await listeners[topic].on_partitions_assigned({partition})
    assert log == [
        "commit [7]",  # FILLS: the tier's listener alone
        "commit [7]",  # ORDERS: the tier's listener first (commit what was done) ...
        "user revoked [0]",  # ... then the user's own, both called
        "user assigned [0]",
    ]


async def test_a_subscriber_without_manual_acks_fails_the_startup_naming_it() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    broker = tier.broker()
    calls: list[str] = []

    @broker.subscriber(FILLS, group_id="risk", ack_policy=AckPolicy.ACK_FIRST)
    async def early(body: Any) -> None:
        calls.append("early")

    @broker.subscriber(ORDERS, group_id="risk")
    async def fine(body: Any) -> None:
        calls.append("fine")

    app = tier.install(FastStream(broker))
    async with TestKafkaBroker(broker):
        with pytest.raises(ConfigError) as refused:
            async with TestApp(app):
                pytest.fail("the app started")
    message = str(refused.value)
    assert f"subscriber on {FILLS} (group risk)" in message
    assert "ACK_FIRST" in message and "AckPolicy.MANUAL" in message
    assert ORDERS not in message
    assert calls == []


async def test_the_startup_check_runs_before_the_broker_connects() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    # Nobody listens there: had the broker started first, this would be a connection error.
    broker = tier.broker(RedpandaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"))

    @broker.subscriber(FILLS, group_id="risk", ack_policy=AckPolicy.ACK)
    async def handle(body: Any) -> None: ...

    app = tier.install(FastStream(broker))
    with pytest.raises(ConfigError, match=FILLS):
        await app.start()
    assert not broker.running
    await tier.close()


def test_verify_catches_the_router_declared_before_include_trap() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    broker = tier.broker()
    router = KafkaRouter()

    @router.subscriber("early", group_id="g")
    async def early(body: Any) -> None: ...

    broker.include_router(router)

    @broker.subscriber("fine", group_id="g")
    async def fine(body: Any) -> None: ...

    with pytest.raises(ConfigError) as refused:
        tier.verify(broker)
    assert "early" in str(refused.value)
    assert "fine" not in str(refused.value)
    assert str(refused.value).count("runs with ack_policy") == 1


async def test_install_checks_only_the_brokers_that_carry_the_tier() -> None:
    tier = EnhancedTier(SERVICE, metrics=False)
    other = KafkaBroker()  # not the tier's: its ack policy is its own business

    @other.subscriber(FILLS, group_id="g")
    async def handle(body: Any) -> None: ...

    app = tier.install(FastStream(other))
    async with TestKafkaBroker(other), TestApp(app):
        assert other.subscribers[0]._listener is None  # type: ignore[attr-defined]


# ---------------------------------------------------------------- install: drain and close


async def test_install_drains_before_the_broker_stops_and_closes_after() -> None:
    tier = EnhancedTier(SERVICE, redis=Redis(), metrics=True, prometheus_port=0)
    assert tier.metrics is not None
    port = tier.metrics.prometheus_port
    assert port
    sink = tier.routing.dead_letter = RecordingSink()
    broker = tier.broker()

    @broker.subscriber(FILLS, group_id="g")
    async def handle(body: Any) -> None: ...

    log: list[str] = []
    consumer = _consumer(TopicPartition(FILLS, 0), log=log)

    async def broker_stops(*args: Any, **kwargs: Any) -> None:
        log.append("broker stopping")
        # A message that finishes while the broker stops is committed at once (draining).
        await _finished(tier.routing.commits, consumer, (_record(FILLS, 0, 8),))
        log.append(f"dlq closed: {sink.closed}")

    app = tier.install(FastStream(broker))
    async with TestKafkaBroker(broker):
        async with TestApp(app):
            await _finished(tier.routing.commits, consumer, (_record(FILLS, 0, 7),))  # waiting in the window
            assert log == []
            assert _answers(port), "the Prometheus endpoint serves while the app runs"
            broker.stop.side_effect = broker_stops  # type: ignore[attr-defined]  # TestKafkaBroker's stand-in
        assert log == ["commit [8]", "broker stopping", "commit [9]", "dlq closed: False"]
    assert sink.closed, "the DLQ producer is released after the broker stopped"
    assert tier.metrics.prometheus_port is None
    assert not _answers(port), "the Prometheus endpoint is released"


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------- settings -> tier


def test_background_commits_are_the_default_with_or_without_dedup() -> None:
    # Without dedup a crash repeats what finished since the last background commit: Kafka's own
    # at-least-once, documented in bench/README.md; `commit_every=1` still awaits each commit.
    for tier_options in (
        {"consumer": ConsumerSettings(commit_every=50)},
        {"redis": Redis(), "settings": Settings(dedup=DedupSettings(enabled=False))},
    ):
        tier = EnhancedTier(SERVICE, metrics=False, **tier_options)
        assert tier.dedup is None
        assert tier.routing.commit_every in (50, AUTO_COMMIT_EVERY)
    assert enhanced_stack(service=SERVICE, metrics=False, commit_every=50)[0].commit_every == 50
    assert (
        EnhancedTier(SERVICE, metrics=False, consumer=ConsumerSettings(commit_every=1)).routing.commit_every
        == 1
    )


def test_consumer_settings_set_the_commit_window() -> None:
    consumer = ConsumerSettings(commit_every=7, commit_interval_s=0.2)
    tier = EnhancedTier(SERVICE, settings=Settings(consumer=consumer), redis=Redis(), metrics=False)
    assert (tier.routing.commit_every, tier.routing.commit_interval_s) == (7, 0.2)
    auto = Settings()  # commit_every="auto"
    assert (
        EnhancedTier(SERVICE, settings=auto, redis=Redis(), metrics=False).routing.commit_every
        == AUTO_COMMIT_EVERY
    )
    assert EnhancedTier(SERVICE, settings=auto, metrics=False).routing.commit_every == AUTO_COMMIT_EVERY
    overridden = EnhancedTier(
        SERVICE,
        settings=Settings(consumer=consumer),
        redis=Redis(),
        metrics=False,
        consumer=ConsumerSettings(commit_every=3),
    )
    assert overridden.routing.commit_every == 3, "consumer= overrides settings.consumer"


def test_dedup_settings_reach_the_dedup_middleware() -> None:
    dedup = DedupSettings(lease_ttl_s=12, done_ttl_s=3_600, local_cache_size=7, on_redis_outage="fail_open")
    tier = EnhancedTier("svc:risk", settings=Settings(dedup=dedup), redis=Redis(), metrics=False)
    assert tier.dedup is not None
    assert (tier.dedup.lease_ms, tier.dedup.done_ms, tier.dedup.cache.maxsize) == (12_000, 3_600_000, 7)
    assert tier.dedup.on_redis_outage == "fail_open"
    assert tier.dedup.namespace == "svc-risk", "the service name, made a valid namespace"
    named = EnhancedTier(SERVICE, redis=Redis(), metrics=False, dedup=dedup, dedup_namespace="ns")
    assert named.dedup is not None and (named.dedup.namespace, named.dedup.lease_ms) == ("ns", 12_000)


def test_retry_settings_become_the_policy_unless_one_is_given() -> None:
    retry = RetrySettings(max_attempts=2, base_delay_s=0.1, max_delay_s=0.5)
    tier = EnhancedTier(SERVICE, settings=Settings(retry=retry), metrics=False)
    budget = tier.routing.policy.budget_for(RuntimeError("unknown: transient"))
    assert (budget.max_attempts, budget.base_delay_s, budget.max_delay_s) == (2, 0.1, 0.5)
    assert tier.routing.policy == RetryPolicy.from_settings(retry)
    mine = RetryPolicy(default=Budget(max_attempts=9, base_delay_s=0.01, max_delay_s=0.02))
    assert (
        EnhancedTier(SERVICE, settings=Settings(retry=retry), policy=mine, metrics=False).routing.policy
        is mine
    )
    assert EnhancedTier(SERVICE, metrics=False).routing.policy == RetryPolicy()


async def test_metrics_follow_the_settings_unless_told_otherwise() -> None:
    off = Settings(metrics=MetricsSettings(enabled=False))
    assert EnhancedTier(SERVICE, settings=off).metrics is None
    forced = EnhancedTier(SERVICE, settings=off, metrics=True, meter_provider=MeterProvider())
    assert forced.metrics is not None and _names(forced.middlewares)[0] is MetricsMiddleware
    on = EnhancedTier(SERVICE, settings=Settings())
    assert on.metrics is not None and on.metrics.prometheus_port is None, "no endpoint unless a port is set"
    served = EnhancedTier(SERVICE, settings=Settings(metrics=MetricsSettings(prometheus_port=0)))
    assert served.metrics is not None and served.metrics.prometheus_port
    for tier in (forced, on, served):
        await tier.close()


async def _finished(commits: Any, consumer: Any, records: tuple[Any, ...]) -> None:
    """One outcome as error routing reports it: the records taken in flight, then finished."""
    await commits.finish(commits.begin(consumer, records))


def test_the_broker_connects_where_the_tier_settings_say() -> None:
    settings = Settings(redpanda=RedpandaSettings(bootstrap_servers="kafka-a:9092,kafka-b:9092"))
    broker = EnhancedTier("svc", settings=settings, metrics=False).broker()
    assert broker._connection_kwargs["bootstrap_servers"] == ["kafka-a:9092", "kafka-b:9092"]


# ---------------------------------------------------------------- install: the startup heap


@pytest.mark.parametrize("tune", [True, False])
async def test_install_tunes_the_garbage_collector_once_the_app_started_unless_told_not_to(
    tune: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from middlewares._gc_tuning import YOUNG_THRESHOLD, tune_garbage_collector

    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "get_threshold", lambda: (700, 10, 10))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(f"threshold {t}"))
    tune_garbage_collector.cache_clear()
    tier = EnhancedTier(SERVICE, metrics=False, consumer=ConsumerSettings(tune_gc=tune))
    broker = tier.broker()

    @broker.subscriber(FILLS, group_id="g")
    async def handle(body: Any) -> None: ...

    app = tier.install(FastStream(broker))
    tuned = ["collect", "freeze", f"threshold {(YOUNG_THRESHOLD, 10, 10)}"] if tune else []
    async with TestKafkaBroker(broker), TestApp(app):
        assert calls == tuned
    async with TestKafkaBroker(broker), TestApp(app):  # a second start: once per process
        assert calls == tuned
    tune_garbage_collector.cache_clear()
