"""Dead-letter topics: found or created with the source's partitions and replication, and a
`max.message.bytes` `HEADROOM_BYTES` above the source's, so a record that was just under the source's
limit still fits with its error headers (broker auto-creation is off).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka import errors as ak
from aiokafka.admin import NewTopic

from alpha_streaming._admin import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, max_message_bytes
from alpha_streaming._errors import KafkaClientError

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

__all__ = ("DEFAULT_MAX_MESSAGE_BYTES", "HEADROOM_BYTES", "UNKNOWN_LAYOUT", "DlqTopic", "describe_or_create")

log = logging.getLogger(__name__)

HEADROOM_BYTES = 256 * 1024
"""How much larger a created DLQ topic's `max.message.bytes` is than its source topic's."""
METADATA_WAIT_S = 15.0


@dataclass(frozen=True, slots=True)
class DlqTopic:
    partitions: int
    max_message_bytes: int


# What a record is fitted against when its DLQ topic was not read (a topic this writer created).
UNKNOWN_LAYOUT = DlqTopic(partitions=2**31 - 1, max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES + HEADROOM_BYTES)


async def describe_or_create(admin: AIOKafkaAdminClient, source: str, target: str) -> DlqTopic:
    existing = await _layout(admin, target)
    if existing is None:
        # Same partitions and replication as the source, so the DLQ is as durable as it.
        partitions, replication = await _layout(admin, source) or (1, 1)
        limit = await max_message_bytes(admin, source) + HEADROOM_BYTES
        response = await admin.create_topics(
            [
                NewTopic(
                    target,
                    num_partitions=partitions,
                    replication_factor=replication,
                    topic_configs={MAX_MESSAGE_BYTES: str(limit)},
                )
            ]
        )
        for item in response.to_object()["topic_errors"]:
            code = item["error_code"]
            if code not in (0, ak.TopicAlreadyExistsError.errno):
                raise KafkaClientError(
                    f"cannot create dead-letter topic {target!r}: "
                    f"{item.get('error_message') or ak.for_code(code).__name__}"
                )
        log.info("created dead-letter topic %s (%d partitions)", target, partitions)
        existing = await _wait_visible(admin, target)
    return DlqTopic(existing[0], await max_message_bytes(admin, target))


async def _layout(admin: AIOKafkaAdminClient, topic: str) -> tuple[int, int] | None:
    """(partition count, replication factor) of `topic`, or None if it does not exist."""
    described = await admin.describe_topics([topic])
    for item in described:
        partitions = item.get("partitions")
        if item.get("topic") == topic and item.get("error_code") == 0 and partitions:
            return len(partitions), max(1, len(partitions[0].get("replicas") or ()))
    return None


async def _wait_visible(admin: AIOKafkaAdminClient, topic: str) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + METADATA_WAIT_S
    while (layout := await _layout(admin, topic)) is None:
        if loop.time() > deadline:
            raise KafkaClientError(f"dead-letter topic {topic!r} not in the metadata after creation")
        await asyncio.sleep(0.05)
    return layout
