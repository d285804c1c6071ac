"""Shared fixtures: real Kafka and Redis endpoints, unique topics and group ids, test doubles.

Endpoint resolution, per service, in order:
1. `KAFKA_BOOTSTRAP_SERVERS` / `REDIS_URL` from the environment (`make test` sets them after
   `scripts/stack.sh up`);
2. testcontainers (Redpanda, Redis) when a Docker engine answers;
3. otherwise the test fails under `CI=true` and skips elsewhere, saying how to start the stack.

Markers follow what a test needs, read from the fixtures it uses (directly or through others):
`kafka` (`kafka_bootstrap`, `kafka_admin`, `new_topic`), `redis` (`redis_url`, `redis_client`,
`private_redis`); everything under `tests/integration/` is `integration` too, and the fault suite
marks itself `fault`. So `pytest -m "not fault"` is the everyday loop and
`pytest -m "not kafka and not redis and not fault"` runs the in-memory tests alone. A test under
`tests/unit/` that asks for Kafka or Redis is a collection error: it belongs in `tests/integration/`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support import RecordingSink, Sleeps, Spy

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# A built service configures the project's loggers (own handler, no propagation), which would hide
# their records from pytest's capture for the rest of the session; tests of it opt in explicitly.
os.environ.setdefault("ALPHA_LOG__CONFIGURE", "false")
START_HINT = (
    "start the local stack with `make stack-up` (or `scripts/stack.sh up`) and export "
    "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 REDIS_URL=redis://127.0.0.1:6379/0, "
    "or run everything with `make test`"
)
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_admin", "new_topic"})
REDIS_FIXTURES = frozenset({"redis_url", "redis_client", "private_redis"})
TESTS = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish() -> None:
    """Finalise leftover objects now (e.g. a fenced aiokafka producer's unretrieved futures, which
    log when collected): collected later, inside a compile (hypothesis' plugin imports lazily at
    the terminal summary), CPython 3.11 fails with "AST constructor recursion depth mismatch"."""
    gc.collect()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    for item in items:
        path = Path(item.fspath)
        # The closure: fixtures the test asks for and every fixture those ask for.
        used = set(getattr(item, "fixturenames", ()))
        if TESTS / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)
        if used & KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if used & REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if TESTS / "unit" in path.parents and used & (KAFKA_FIXTURES | REDIS_FIXTURES):
            misplaced.append(f"{item.nodeid} ({', '.join(sorted(used & (KAFKA_FIXTURES | REDIS_FIXTURES)))})")
    if misplaced:
        raise pytest.UsageError(
            "unit tests run in memory; move these to tests/integration/:\n  " + "\n  ".join(misplaced)
        )


def unavailable(what: str) -> None:
    """Fail under CI, skip elsewhere: a missing service is never a silent pass."""
    message = f"{what} is not reachable: {START_HINT}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def host_port(address: str, default_port: int) -> tuple[str, int]:
    address = address.split("://", 1)[-1].split("@")[-1].split("/")[0]
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host else (address, default_port)


def any_answers(addresses: str, default_port: int) -> bool:
    """A bootstrap list is reachable when any of its addresses answers, as for the clients."""
    return any(answers(*host_port(a.strip(), default_port)) for a in addresses.split(",") if a.strip())


def docker_answers() -> bool:
    """A Docker engine answers a ping (testcontainers needs one).

    The engine's socket is probed with a socket we close ourselves first: docker-py never closes
    the socket of a failed connect, and its ResourceWarning would fail whichever test the garbage
    collector happens to run in (pytest turns warnings into errors).
    """
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if docker_host.startswith("unix://"):
        if not unix_socket_answers(docker_host.removeprefix("unix://")):
            return False
    elif not answers(*host_port(docker_host, 2375)):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return False
    return True


def unix_socket_answers(path: str, timeout: float = 2.0) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Endpoints:
    kafka: str
    redis: str


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with ExitStack() as stack:
        kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if kafka is None and docker_answers():
            from testcontainers.community.kafka import RedpandaContainer

            kafka = stack.enter_context(RedpandaContainer()).get_bootstrap_server()
        if kafka is None:
            unavailable("Kafka (KAFKA_BOOTSTRAP_SERVERS unset and no Docker engine)")
        assert kafka is not None
        if not any_answers(kafka, 9092):
            unavailable(f"Kafka at {kafka}")
        yield kafka


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        if url is None and docker_answers():
            from testcontainers.redis import RedisContainer

            container = stack.enter_context(RedisContainer())
            url = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        if url is None:
            unavailable("Redis (REDIS_URL unset and no Docker engine)")
        assert url is not None
        if not answers(*host_port(url, 6379)):
            unavailable(f"Redis at {url}")
        yield url


@pytest.fixture(scope="session")
def endpoints(kafka_bootstrap: str, redis_url: str) -> Endpoints:
    """Both services at once, for a test that hands them to a subprocess."""
    return Endpoints(kafka=kafka_bootstrap, redis=redis_url)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.ping()
    except Exception as exc:
        unavailable(f"Redis at {redis_url} ({exc})")
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
    try:
        await admin.start()
    except Exception as exc:
        unavailable(f"Kafka at {kafka_bootstrap} ({exc})")
    yield admin
    await admin.close()


NewTopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
async def new_topic(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[NewTopicFactory]:
    """Create a fresh, uniquely named topic: `await new_topic(partitions=3, prefix="orders")`.

    Topics made in a session are deleted at its end; their names never repeat across runs.
    """
    created: list[str] = []

    async def create(
        partitions: int = 1,
        prefix: str = "t",
        *,
        name: str | None = None,
        config: dict[str, str] | None = None,
    ) -> str:
        topic = name or f"{prefix}.{uuid.uuid4().hex[:12]}"
        await kafka_admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=config or {},
                )
            ]
        )
        created.append(topic)
        # Metadata reaches the broker's cache shortly after creation; wait until it is served.
        for _ in range(100):
            described = await kafka_admin.describe_topics([topic])
            if described and described[0].get("partitions") and len(described[0]["partitions"]) == partitions:
                return topic
            await asyncio.sleep(0.05)
        raise AssertionError(f"topic {topic} not visible in metadata after creation")

    yield create
    if created:
        await kafka_admin.delete_topics(created)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique names for groups, keys and namespaces: `unique("group")` -> `group-1a2b3c4d`."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def spy() -> Spy:
    """A fresh `Spy` (records every delivery and its final `MessageState`)."""
    return Spy()


@pytest.fixture
def sink() -> RecordingSink:
    """A DLQ sink that records what error routing would dead-letter."""
    return RecordingSink()


@pytest.fixture
def sleeps() -> Sleeps:
    """A `RetryPolicy(sleep=...)` that records the backoffs instead of waiting them."""
    return Sleeps()
