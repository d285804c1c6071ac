"""Topic administration: create topics idempotently and read partition counts.

Shared by the CLI (`topics bootstrap`, `dlq replay`), the DLQ tools, the demo, and anything else
that must make sure a topic exists before writing to it (the cluster has topic auto-creation
off). The admin client comes from a connected FastStream `KafkaBroker` (`broker_admin`), so the
connection settings (bootstrap servers, client id, security) are the one set built by
`make_broker`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from aiokafka import errors as ak
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from alpha_streaming._broker import describe_error, make_broker
from alpha_streaming._errors import ConfigError, KafkaClientError
from alpha_streaming._replication import cluster_replication, replication_warning
from alpha_streaming._settings import RedpandaSettings

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient
    from faststream.kafka import KafkaBroker

__all__ = (
    "TopicResult",
    "TopicSpec",
    "TopicStatus",
    "broker_admin",
    "connected_broker",
    "describe_error",
    "ensure_topics",
    "max_message_bytes",
    "topic_partitions",
)

# How long a freshly created topic may take to show up in the metadata the broker serves.
METADATA_WAIT_S = 15.0
_TOPIC_ALREADY_EXISTS = ak.TopicAlreadyExistsError.errno
# Kafka's broker default `message.max.bytes` (1 MiB + 12), used when a config cannot be read.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
MAX_MESSAGE_BYTES = "max.message.bytes"
log = logging.getLogger(__name__)


class TopicStatus(StrEnum):
    CREATED = "created"
    """The topic did not exist and was created."""
    EXISTS = "exists"
    """The topic existed with the partition count asked for."""
    MISMATCH = "mismatch"
    """The topic existed with another partition count (left as it is: shrinking is impossible)."""
    FAILED = "failed"
    """The broker refused to create the topic."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to make sure of: name, partitions, replication factor, topic configs."""

    name: str
    partitions: int = 1
    replication_factor: int | None = None
    """None: the cluster's `default.replication.factor`."""
    config: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("topic name must be non-empty")
        if self.partitions < 1:
            raise ConfigError(f"topic {self.name!r}: partitions must be >= 1, got {self.partitions}")
        if self.replication_factor is not None and self.replication_factor < 1:
            raise ConfigError(
                f"topic {self.name!r}: replication factor must be >= 1, got {self.replication_factor}"
            )


@dataclass(frozen=True, slots=True)
class TopicResult:
    name: str
    status: TopicStatus
    partitions: int | None
    """Partition count on the cluster (None when creation failed)."""
    detail: str = ""
    replication_factor: int | None = None
    """The replication factor a created topic got (None for topics that existed or failed)."""


def broker_admin(broker: KafkaBroker) -> AIOKafkaAdminClient:
    """The admin client of a connected `KafkaBroker` (FastStream opens one next to the producer)."""
    try:
        return broker.config.broker_config.admin_client
    except Exception as exc:
        raise KafkaClientError(
            "the KafkaBroker has no admin client; connect it first (`await broker.connect()`)"
        ) from exc


@asynccontextmanager
async def connected_broker(config: RedpandaSettings) -> AsyncIterator[KafkaBroker]:
    """A connected idempotent `KafkaBroker` (producer + admin client), stopped on exit."""
    # No FastStream access logger: this broker has no subscribers to log for, and FastStream's
    # shared `faststream.access.kafka` logger would keep a handler bound to whatever sys.stdout
    # is at connect time (a CLI test runner's buffer, closed later), breaking later brokers' logs.
    broker = make_broker(config, logger=None)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.stop()


async def topic_partitions(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    """Partition counts of the topics that exist; missing topics are absent from the result."""
    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    try:
        described = await admin.describe_topics(names)
    except ak.KafkaError as exc:
        raise KafkaClientError(f"describe topics {names}: {describe_error(exc)}") from exc
    return {
        item["topic"]: len(item["partitions"])
        for item in described
        if item.get("error_code") == 0 and item.get("partitions")
    }


async def max_message_bytes(admin: AIOKafkaAdminClient, topic: str) -> int:
    """The largest record batch `topic` accepts (its `max.message.bytes`)."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={MAX_MESSAGE_BYTES: None})
    responses = await admin.describe_configs([resource])
    for response in responses:
        for item in response.to_object()["resources"]:
            for entry in item["config_entries"]:
                if entry["config_names"] == MAX_MESSAGE_BYTES and entry["config_value"]:
                    return int(entry["config_value"])
    return DEFAULT_MAX_MESSAGE_BYTES


async def ensure_topics(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], *, timeout_s: float = METADATA_WAIT_S
) -> list[TopicResult]:
    """Create the topics of `specs` that do not exist yet; idempotent.

    Returns one result per distinct topic name, in the order given. Existing topics are
    reported (`EXISTS`, or `MISMATCH` when the partition count differs), never altered. Created
    topics are returned only once the broker serves them in its metadata, so a producer or
    consumer started right after does not race the creation.
    """
    unique = list({spec.name: spec for spec in reversed(specs)}.values())[::-1]
    existing = await topic_partitions(admin, (spec.name for spec in unique))
    results: dict[str, TopicResult] = {}
    for spec in unique:
        if spec.name in existing:
            results[spec.name] = _existing(spec, existing[spec.name])

    missing = [spec for spec in unique if spec.name not in existing]
    if missing:
        results.update(await _create(admin, missing, timeout_s))
    return [results[spec.name] for spec in unique]


def _existing(spec: TopicSpec, partitions: int) -> TopicResult:
    if partitions == spec.partitions:
        return TopicResult(spec.name, TopicStatus.EXISTS, partitions)
    return TopicResult(
        spec.name,
        TopicStatus.MISMATCH,
        partitions,
        f"has {partitions} partitions, asked for {spec.partitions} (left unchanged)",
    )


async def _create(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], timeout_s: float
) -> dict[str, TopicResult]:
    cluster = await cluster_replication(admin)
    factors = {spec.name: spec.replication_factor or cluster.default_replication_factor for spec in specs}
    for name, factor in factors.items():
        if (warning := replication_warning(name, factor, cluster)) is not None:
            log.warning("%s", warning)
    requests = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=factors[spec.name],
            topic_configs=dict(spec.config),
        )
        for spec in specs
    ]
    try:
        response = await admin.create_topics(requests)
    except ak.KafkaError as exc:
        names = [spec.name for spec in specs]
        raise KafkaClientError(f"create topics {names}: {describe_error(exc)}") from exc

    errors = {item["topic"]: item for item in response.to_object()["topic_errors"]}
    results: dict[str, TopicResult] = {}
    created: dict[str, TopicSpec] = {}
    raced: list[TopicSpec] = []
    for spec in specs:
        item = errors.get(spec.name, {"error_code": 0})
        code = item["error_code"]
        if code == 0:
            created[spec.name] = spec
        elif code == _TOPIC_ALREADY_EXISTS:
            raced.append(spec)  # created by someone else between our describe and create
        else:
            reason = item.get("error_message") or ak.for_code(code).__name__
            results[spec.name] = TopicResult(spec.name, TopicStatus.FAILED, None, reason)

    if raced:
        counts = await topic_partitions(admin, (spec.name for spec in raced))
        for spec in raced:
            results[spec.name] = _existing(spec, counts.get(spec.name, spec.partitions))
    if created:
        await _wait_visible(admin, created, timeout_s)
        for name, spec in created.items():
            results[name] = TopicResult(
                name, TopicStatus.CREATED, spec.partitions, replication_factor=factors[name]
            )
    return results


async def _wait_visible(admin: AIOKafkaAdminClient, specs: Mapping[str, TopicSpec], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        counts = await topic_partitions(admin, specs)
        pending = [name for name, spec in specs.items() if counts.get(name) != spec.partitions]
        if not pending:
            return
        if loop.time() > deadline:
            raise KafkaClientError(
                f"topics {pending} were created but are not in the broker's metadata after {timeout_s:.0f} s"
            )
        await asyncio.sleep(0.05)
