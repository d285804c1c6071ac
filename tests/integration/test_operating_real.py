"""Operating a built service against the real Kafka: missing topics fail fast and show in health,
lag covers every assigned partition, the metrics endpoint names the service, logs name the message."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import urllib.request
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream import AckPolicy, FastStream

from alpha_streaming import (
    ConfigError,
    DedupSettings,
    EventEnvelope,
    LogSettings,
    MetricsSettings,
    RedpandaSettings,
    RetrySettings,
    Settings,
    StreamService,
    StreamServiceBuilder,
    TransientError,
    UnknownTopicError,
    configure_logging,
    make_broker,
)
from alpha_streaming._logging import FASTSTREAM_LOGGERS, NOISY_LOGGERS, PROJECT_LOGGERS
from middlewares import EnhancedTier, MetricsMiddleware
from tests.conftest import NewTopicFactory
from tests.support import eventually


def settings_for(kafka: str, *, port: int | None = None, max_request_size: int = 1_048_576) -> Settings:
    return Settings(
        redpanda=RedpandaSettings(bootstrap_servers=kafka, max_request_size=max_request_size),
        dedup=DedupSettings(enabled=False),
        metrics=MetricsSettings(prometheus_port=port),
    )


def service_for(settings: Settings, consumed: str, produced: str, handler: Any = None) -> StreamService:
    async def ignore(message: dict[str, Any], topic: str) -> None:
        return None

    return (
        StreamServiceBuilder("ops-check", settings=settings)
        .add_consumer_handler(topics=[consumed], group_id=f"ops.{consumed}", handler_func=handler or ignore)
        .add_producer(topics=[produced])
        .with_metrics()
        .build()
    )


async def test_missing_topics_fail_start_within_seconds_naming_each_and_the_fix(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    consumed = await new_topic(prefix="paper.ops")
    missing_in, missing_out = f"{consumed}-absent-in", f"{consumed}-absent-out"
    for wanted_in, wanted_out, missing in (
        (missing_in, missing_out, [(missing_in, "consumed"), (missing_out, "produced")]),
        (consumed, missing_out, [(missing_out, "produced")]),
    ):
        service = service_for(settings_for(kafka_bootstrap), wanted_in, wanted_out)
        started = time.monotonic()
        with pytest.raises(UnknownTopicError) as caught:
            await service.start()
        assert time.monotonic() - started < 5
        message = str(caught.value)
        for topic, role in missing:
            assert f"{topic!r} ({role})" in message
        flags = " ".join(f"--topic {topic}" for topic, _ in missing)
        assert f"alpha-streaming topics bootstrap {flags}" in message
        assert not service.started
        await service.stop()


async def test_a_produced_topic_that_refuses_the_producers_requests_fails_start_naming_the_fix(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    # A batch the broker refuses after it was sent breaks aiokafka's idempotent producer for
    # that partition until a restart: such a topic is refused at startup instead.
    consumed = await new_topic(prefix="paper.ops")
    produced = await new_topic(prefix="paper.ops.small", config={"max.message.bytes": "100000"})
    service = service_for(settings_for(kafka_bootstrap), consumed, produced)
    with pytest.raises(ConfigError) as caught:
        await service.start()
    message = str(caught.value)
    assert f"{produced!r} (max.message.bytes=100000)" in message
    assert "ALPHA_REDPANDA_MAX_REQUEST_SIZE=1048576" in message and "at most 100000" in message
    assert not service.started
    await service.stop()
    fitted = service_for(settings_for(kafka_bootstrap, max_request_size=100_000), consumed, produced)
    await fitted.start()
    try:
        assert fitted.started
    finally:
        await fitted.stop()


async def test_health_reports_a_topic_deleted_while_running(
    kafka_bootstrap: str, new_topic: NewTopicFactory, kafka_admin: AIOKafkaAdminClient
) -> None:
    consumed, produced = await new_topic(prefix="paper.ops"), await new_topic(prefix="paper.ops")
    service = service_for(settings_for(kafka_bootstrap), consumed, produced)
    await service.start()
    try:
        await eventually(lambda: _ready(service), "the service to become ready", within_s=30)
        await kafka_admin.delete_topics([produced])
        await eventually(lambda: _missing(service, produced), "health to report the deleted topic")
        health = (await service.health()).to_dict()
        assert not health["ready"]
        assert any(
            f"create them with: alpha-streaming topics bootstrap --topic {produced}" in p
            for p in health["problems"]
        )
    finally:
        await service.stop()


async def _ready(service: StreamService) -> bool:
    return (await service.health()).ready


async def _missing(service: StreamService, topic: str) -> bool:
    return topic in (await service.health()).missing_topics


async def test_lag_covers_every_assigned_partition_and_the_endpoint_names_the_service(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    consumed, produced = (
        await new_topic(partitions=3, prefix="paper.ops"),
        await new_topic(prefix="paper.ops"),
    )
    service = service_for(settings_for(kafka_bootstrap, port=0), consumed, produced)
    metrics = next(m for m in service.broker.middlewares if isinstance(m, MetricsMiddleware))
    await service.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            envelope = EventEnvelope.create(type="t", data={}, source="test")
            await producer.send_and_wait(consumed, envelope.to_bytes(), partition=1)
        finally:
            await producer.stop()

        def lag() -> dict[int, float]:
            samples = metrics.read()
            return {
                int(s.attributes["partition"]): s.value for s in samples if s.name == "alpha.consumer.lag"
            }

        # Partitions 0 and 2 never see a message: reported anyway, at 0.
        await eventually(lambda: lag() == {0: 0, 1: 0, 2: 0}, "lag for all three partitions", within_s=30)
        port = metrics.prometheus_port
        text = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
        assert 'service_name="ops-check"' in text
        assert 'state="in_flight"' not in text and 'kind="retry"' not in text
        assert metrics._private is not None and metrics._private.server is not None
        assert metrics._private.server.server_address[0] == "127.0.0.1"
    finally:
        await service.stop()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def restore_loggers() -> Any:
    names = (*PROJECT_LOGGERS, *NOISY_LOGGERS, *FASTSTREAM_LOGGERS)
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    yield
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


@pytest.mark.usefixtures("restore_loggers")
async def test_a_retry_line_in_json_names_the_record_and_the_event(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    consumed, produced = await new_topic(prefix="paper.ops"), await new_topic(prefix="paper.ops")
    failures = [TransientError("venue timeout")]

    async def flaky(message: dict[str, Any], topic: str) -> None:
        if failures:
            raise failures.pop()

    settings = settings_for(kafka_bootstrap)
    settings.retry = RetrySettings(base_delay_s=0.0)
    service = service_for(settings, consumed, produced, flaky)
    out = io.StringIO()
    configure_logging(LogSettings(configure=True, format="json"), stream=out)
    envelope = EventEnvelope.create(type="t", data={}, source="test")
    await service.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            headers = [(k, v.encode()) for k, v in envelope.headers().items()]
            await producer.send_and_wait(consumed, envelope.to_bytes(), headers=headers)
        finally:
            await producer.stop()
        await eventually(lambda: "retrying" in out.getvalue(), "the retry line")
    finally:
        await service.stop()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (retry,) = [line for line in lines if "retrying" in line["message"]]
    assert retry["level"] == "WARNING" and retry["logger"] == "middlewares._error_routing"
    assert (retry["topic"], retry["partition"], retry["offset"]) == (consumed, 0, 0)
    assert (retry["event_id"], retry["correlation_id"]) == (envelope.id, envelope.correlation_id)


async def test_a_decorator_apps_lag_covers_the_idle_partitions_of_a_consumer_that_processed_one(
    kafka_bootstrap: str, new_topic: NewTopicFactory, unique: Any
) -> None:
    topic = await new_topic(partitions=3, prefix="paper.ops")
    metrics = MetricsMiddleware(service="deco")
    broker = make_broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap), middlewares=(metrics,))
    handled: list[Any] = []

    @broker.subscriber(topic, group_id=unique("deco"), auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)
    async def handle(body: dict[str, Any]) -> None:
        handled.append(body)

    def lag() -> dict[int, float]:
        found = [s for s in metrics.read() if s.name == "alpha.consumer.lag"]
        return {int(s.attributes["partition"]): s.value for s in found}

    try:
        await broker.start()
        await broker.publish({"n": 1}, topic, partition=2)
        await eventually(lambda: bool(handled), "the message")
        await eventually(lambda: lag() == {0: 0, 1: 0, 2: 0}, "lag for all three partitions", within_s=30)
    finally:
        await broker.stop()
        metrics.shutdown()


async def test_a_decorator_app_fails_fast_naming_a_missing_topic_after_its_own_startup_hooks(
    kafka_bootstrap: str, new_topic: NewTopicFactory, kafka_admin: AIOKafkaAdminClient
) -> None:
    consumed, made_at_startup = await new_topic(prefix="paper.ops"), f"paper.ops.made.{uuid.uuid4().hex[:8]}"
    missing = f"paper.ops.missing.{uuid.uuid4().hex[:8]}"
    tier = EnhancedTier("ops-decorator", metrics=False)
    broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap))

    @broker.subscriber(consumed, group_id="ops.decorator")
    @broker.publisher(made_at_startup)
    @broker.publisher(missing)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return body

    app = tier.install(FastStream(broker))

    @app.on_startup
    async def create_my_topic() -> None:  # registered after install: runs before the check
        await kafka_admin.create_topics([NewTopic(made_at_startup, num_partitions=1, replication_factor=1)])

    with pytest.raises(UnknownTopicError) as caught:
        await app.start()
    message = str(caught.value)
    assert f"{missing!r} (produced)" in message
    assert made_at_startup not in message and consumed not in message
    assert f"alpha-streaming topics bootstrap --topic {missing}" in message
    await app.stop()
    await kafka_admin.delete_topics([made_at_startup])
