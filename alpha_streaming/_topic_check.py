"""What a service checks before it consumes: Kafka answers and every topic it uses exists.

`EnhancedTier.install` runs it for every broker carrying the tier (builder services included),
over the topics its subscribers consume and its declared publishers produce.

(Dead-letter topics are not required: error routing creates a missing one when it needs it.)

Without it a missing consumed topic shows as ~300 "not found in cluster metadata" lines and,
30 s later, an `UnknownTopicOrPartitionError` that names no topic; a missing produced topic
starts fine and hangs the first send for 30 s. Here both fail within seconds, naming each
missing topic and the command that creates it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from unittest.mock import Mock

from faststream.kafka import KafkaBroker

from alpha_streaming._admin import broker_admin, topic_partitions
from alpha_streaming._errors import UnknownTopicError

__all__ = ("bootstrap_hint", "require_topics")

log = logging.getLogger(__name__)


def bootstrap_hint(topics: Sequence[str]) -> str:
    """The command that creates `topics` (and their .dlq twins)."""
    flags = " ".join(f"--topic {t}" for t in topics)
    return (
        f"alpha-streaming topics bootstrap {flags} "
        "(or --service module:attribute naming the built service, for all of its topics)"
    )


def declared_topics(broker: KafkaBroker) -> tuple[list[str], list[str]]:
    """(consumed, produced): the subscribers' topics (not patterns) and the declared publishers'."""
    subscribers: list[Any] = [s for s in broker.subscribers if not getattr(s, "pattern", None)]
    consumed = [topic for s in subscribers for topic in getattr(s, "topic_names", ())]
    produced = [topic for p in broker.publishers if (topic := getattr(p, "topic", None))]
    return consumed, produced


async def require_topics(
    broker: KafkaBroker, *, service: str, consumed: Sequence[str], produced: Sequence[str]
) -> None:
    """Connect `broker` and raise `UnknownTopicError` naming every missing topic; stop it on failure."""
    if isinstance(broker.start, Mock):
        return  # FastStream's in-memory test broker: there is no cluster to ask
    await broker.connect()  # a `make_broker` broker: one clear error, nothing left open
    wanted = list(dict.fromkeys([*consumed, *produced]))
    try:
        existing = await topic_partitions(broker_admin(broker), wanted)
    except BaseException:
        await broker.stop()
        raise
    missing = [t for t in wanted if t not in existing]
    if missing:
        await broker.stop()
        roles = ", ".join(f"{t!r} ({'consumed' if t in consumed else 'produced'})" for t in missing)
        problem = UnknownTopicError(
            f"service {service!r} cannot start: missing on the cluster at {_bootstrap_of(broker)}: "
            f"{roles}; create them with: {bootstrap_hint(missing)}"
        )
        # One formatted line ahead of the traceback `faststream run` prints.
        log.error("%s", problem)
        raise problem


def _bootstrap_of(broker: KafkaBroker) -> str:
    servers = getattr(broker, "_connection_kwargs", {}).get("bootstrap_servers", "?")
    return ",".join(servers) if isinstance(servers, list | tuple) else str(servers)
