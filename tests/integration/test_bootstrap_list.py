"""A comma-separated bootstrap list connects on every path: direct tier, broker, DLQ, admin, CLI.

Each list puts a closed port before the real broker, as one "closed,real" string given through
`KAFKA_BOOTSTRAP_SERVERS` or through keyword arguments / `--bootstrap-servers`. Left unsplit,
that string reaches aiokafka as one host name and fails with "Name or service not known"; split,
the client skips the closed port and bootstraps from the broker that answers.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from typer.testing import CliRunner

from alpha_streaming import RedpandaConsumer, RedpandaProducer, RedpandaSettings, cli
from alpha_streaming._admin import TopicSpec, TopicStatus, broker_admin, connected_broker, ensure_topics
from alpha_streaming._broker import make_broker
from alpha_streaming._dlq import DlqHeaders
from alpha_streaming._errors import KafkaClientError
from middlewares._dead_letter import DeadLetterWriter
from tests.conftest import NewTopicFactory

BOOTSTRAP_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "ALPHA_REDPANDA_BOOTSTRAP_SERVERS")
runner = CliRunner()


def closed_address() -> str:
    """A local port nobody listens on: bound to learn a free one, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def use_env_servers(monkeypatch: pytest.MonkeyPatch, servers: str) -> None:
    """Make `servers` the bootstrap list of the environment (the prefixed variable would win)."""
    for name in BOOTSTRAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)


@pytest.fixture
def closed() -> str:
    return closed_address()


@pytest.fixture
def server_list(closed: str, kafka_bootstrap: str) -> str:
    """One comma-separated string: a closed port first, then the real broker(s)."""
    return f"{closed},{kafka_bootstrap}"


@pytest.fixture(params=["env", "kwargs"])
def config(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    server_list: str,
    closed: str,
    kafka_bootstrap: str,
) -> RedpandaSettings:
    if request.param == "env":
        use_env_servers(monkeypatch, server_list)
        settings = RedpandaSettings(client_id="bootstrap-list-tests")
    else:
        settings = RedpandaSettings(bootstrap_servers=server_list, client_id="bootstrap-list-tests")
    real = [address.strip() for address in kafka_bootstrap.split(",")]
    assert settings.bootstrap_servers == [closed, *real]
    return settings


async def read_first(kafka_bootstrap: str, topic: str) -> ConsumerRecord[bytes, bytes]:
    """The first record of partition 0, read by a plain aiokafka consumer (no group, no commits)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        async with asyncio.timeout(30):
            record: ConsumerRecord[bytes, bytes] = await consumer.getone()
        return record
    finally:
        await consumer.stop()


async def test_direct_tier_round_trips_one_record(
    config: RedpandaSettings, new_topic: NewTopicFactory, unique: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=1, prefix="bootlist.direct")
    async with RedpandaProducer(config) as producer:
        sent = await producer.send(topic=topic, key="AAPL", value={"qty": 3})

    async with RedpandaConsumer(config, topics=[topic], group_id=unique("bootlist")) as consumer:
        async with asyncio.timeout(30):
            received = await anext(aiter(consumer))

    assert (received.key, received.value, received.offset) == (b"AAPL", {"qty": 3}, sent.offset)


async def test_make_broker_publishes_and_its_dlq_producer_connects(
    config: RedpandaSettings, kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=1, prefix="bootlist.broker")
    dlq = await new_topic(partitions=1, name=f"{topic}.dlq")
    broker = make_broker(config, logger=None)
    writer = DeadLetterWriter(service="bootstrap-list-tests")
    await broker.connect()
    try:
        await broker.publish(b"payload", topic, key=b"k1")
        record = await read_first(kafka_bootstrap, topic)
        # The DLQ producer is built from the broker's connection options: the same list.
        await writer.write(broker, [record], ValueError("boom"), attempts=1, group_id=None)
    finally:
        await writer.close()
        await broker.stop()

    assert (record.key, record.value) == (b"k1", b"payload")
    dead = await read_first(kafka_bootstrap, dlq)
    headers = dict(dead.headers)
    assert (dead.key, dead.value) == (b"k1", b"payload")
    assert headers[DlqHeaders.ORIGINAL_TOPIC] == topic.encode()
    assert headers[DlqHeaders.EXCEPTION_FQCN] == b"builtins.ValueError"


async def test_admin_helper_connects_and_creates_a_topic(
    config: RedpandaSettings, kafka_admin: AIOKafkaAdminClient
) -> None:
    name = f"bootlist.admin.{uuid.uuid4().hex[:12]}"
    try:
        async with connected_broker(config) as broker:
            (result,) = await ensure_topics(broker_admin(broker), [TopicSpec(name, partitions=2)])
        assert (result.status, result.partitions) == (TopicStatus.CREATED, 2)
        assert name in await kafka_admin.list_topics()
    finally:
        await kafka_admin.delete_topics([name])


async def test_admin_error_names_every_address_joined_by_commas() -> None:
    servers = [closed_address(), closed_address()]
    config = RedpandaSettings(bootstrap_servers=",".join(servers))
    with pytest.raises(KafkaClientError, match="cannot connect to Kafka at ") as caught:
        async with connected_broker(config):
            pass
    assert f"at {servers[0]},{servers[1]}:" in str(caught.value)


@pytest.mark.parametrize("source", ["flag", "env"])
async def test_cli_topics_bootstrap_connects_through_the_list(
    source: str,
    server_list: str,
    kafka_admin: AIOKafkaAdminClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"bootlist.cli.{uuid.uuid4().hex[:12]}"
    args = ["topics", "bootstrap", "--topic", name, "--partitions", "1"]
    if source == "flag":
        args += ["--bootstrap-servers", server_list]
    else:
        use_env_servers(monkeypatch, server_list)
    try:
        # The CLI calls asyncio.run(); a worker thread keeps it off the test's running loop.
        result = await asyncio.to_thread(runner.invoke, cli.app, args)
        assert result.exit_code == 0, result.output
        assert "2 topics: 2 created, 0 existed" in result.stdout
        assert {name, f"{name}.dlq"} <= set(await kafka_admin.list_topics())
    finally:
        await kafka_admin.delete_topics([name, f"{name}.dlq"])


async def test_cli_error_names_every_address_joined_by_commas() -> None:
    servers = f"{closed_address()},{closed_address()}"
    args = ["topics", "bootstrap", "--topic", "bootlist.never", "--bootstrap-servers", servers]
    result = await asyncio.to_thread(runner.invoke, cli.app, args)
    assert result.exit_code == cli.EXIT_ERROR, result.output
    assert result.stderr.startswith(f"KafkaClientError: cannot connect to Kafka at {servers}: ")
    assert "Traceback" not in result.stderr
