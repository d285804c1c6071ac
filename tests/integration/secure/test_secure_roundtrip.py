"""Round trips over the secure listeners: direct tier, a ready SSLContext or security object,
a built service writing a dead letter, and the CLI; every connection with the same security."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

import pytest
from faststream.security import SASLScram512
from typer.testing import CliRunner

from alpha_streaming import (
    DedupSettings,
    EventEnvelope,
    PermanentError,
    RedpandaConsumer,
    RedpandaProducer,
    RedpandaSettings,
    Settings,
    StreamServiceBuilder,
    TopicSpec,
    broker_admin,
    cli,
    connected_broker,
    ensure_topics,
    make_broker,
    topic_partitions,
)
from alpha_streaming._dlq import DeadLetter
from examples.secure_client import round_trip, settings_with_context
from tests.integration.secure.conftest import SecureCluster
from tests.support import eventually

pytestmark = pytest.mark.secure
runner = CliRunner()


def client_context(secure: SecureCluster) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=secure.file("ca.pem"))
    context.load_cert_chain(secure.file("client.pem"), secure.file("client.key"), secure.key_password)
    return context


@pytest.mark.parametrize("listener", ["ssl", "scram", "plain", "mtls"])
async def test_direct_tier_round_trip(secure: SecureCluster, topic_name: str, listener: str) -> None:
    record = await round_trip(secure.settings(listener), topic_name, f"g-{uuid.uuid4().hex[:8]}")
    assert record.topic == topic_name
    assert isinstance(record.value, dict) and record.value["data"] == {"ok": True}


async def test_a_ready_ssl_context_reaches_the_mtls_listener(secure: SecureCluster, topic_name: str) -> None:
    config = settings_with_context(
        secure.file("ca.pem"), secure.file("client.pem"), secure.file("client.key"), secure.key_password
    )
    config = config.model_copy(update={"bootstrap_servers": ["127.0.0.1:18094"]})
    record = await round_trip(config, topic_name, f"g-{uuid.uuid4().hex[:8]}")
    assert record.topic == topic_name


async def test_make_broker_takes_a_security_argument(secure: SecureCluster) -> None:
    config = RedpandaSettings(bootstrap_servers="127.0.0.1:18094", security_protocol="SSL")
    broker = make_broker(config, security=client_context(secure), logger=None)
    await broker.connect()
    try:
        assert await topic_partitions(broker_admin(broker), ["no.such.topic"]) == {}
    finally:
        await broker.stop()


async def test_a_faststream_security_object_replaces_the_settings(
    secure: SecureCluster, topic_name: str
) -> None:
    scram = SASLScram512(
        secure.users["SCRAM_USER"],
        secure.users["SCRAM_PASSWORD"],
        ssl_context=ssl.create_default_context(cafile=secure.file("ca.pem")),
    )
    config = RedpandaSettings(bootstrap_servers="127.0.0.1:18093", security=scram)
    record = await round_trip(config, topic_name, f"g-{uuid.uuid4().hex[:8]}")
    assert record.topic == topic_name


@pytest.mark.parametrize("listener", ["scram", "mtls"])
async def test_built_service_consumes_and_dead_letters_over_the_secure_listener(
    secure: SecureCluster, topic_name: str, listener: str
) -> None:
    config = secure.settings(listener)
    async with connected_broker(config) as admin:
        await ensure_topics(broker_admin(admin), [TopicSpec(topic_name), TopicSpec(f"{topic_name}.dlq")])
    seen: list[dict[str, Any]] = []

    async def handle(message: dict[str, Any], topic: str) -> None:
        """A legacy handler: `message` is the envelope as a dict."""
        if message["data"].get("poison"):
            raise PermanentError("poison on purpose")
        seen.append(message["data"])

    service = (
        StreamServiceBuilder(
            "secure-svc", config, Settings(redpanda=config, dedup=DedupSettings(enabled=False))
        )
        .add_consumer_handler(topics=[topic_name], group_id=f"g-{uuid.uuid4().hex[:8]}", handler_func=handle)
        .build()
    )
    good = EventEnvelope.create(type="t", source="test", key="a", data={"n": 1})
    bad = EventEnvelope.create(type="t", source="test", key="b", data={"poison": True})
    await service.start()
    try:
        async with RedpandaProducer(config) as producer:
            await producer.send(topic=topic_name, key="a", value=good)
            await producer.send(topic=topic_name, key="b", value=bad)
        await eventually(lambda: seen == [{"n": 1}], "the good event handled")
        group = f"dlq-{uuid.uuid4().hex[:8]}"
        async with RedpandaConsumer(config, topics=[f"{topic_name}.dlq"], group_id=group) as dlq:
            async with asyncio.timeout(30):
                letter = await anext(aiter(dlq))
    finally:
        await service.stop()
    assert letter.raw_headers and DeadLetter.from_headers(letter.raw_headers).original_topic == topic_name
    assert isinstance(letter.value, dict) and letter.value["id"] == bad.id


async def test_cli_topics_bootstrap_over_sasl_ssl(
    secure: SecureCluster, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in secure.env("scram").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    args = ["topics", "bootstrap", "--topic", topic_name, "--partitions", "2"]
    result = await asyncio.to_thread(runner.invoke, cli.app, args)
    assert result.exit_code == 0, result.output
    async with connected_broker(secure.settings("scram")) as admin:
        found = await topic_partitions(broker_admin(admin), [topic_name, f"{topic_name}.dlq"])
    assert found == {topic_name: 2, f"{topic_name}.dlq": 2}
