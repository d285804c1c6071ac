"""What a service checks before it consumes: Kafka answers and every topic it uses exists.

`EnhancedTier.install` runs it for every broker carrying the tier (builder services included),
over the topics its subscribers consume and its declared publishers produce.

(Dead-letter topics are not required: error routing creates a missing one when it needs it.)

Without it a missing consumed topic shows as ~300 "not found in cluster metadata" lines and,
30 s later, an `UnknownTopicOrPartitionError` that names no topic; a missing produced topic
starts fine and hangs the first send for 30 s. Here both fail within seconds, naming each
missing topic and the command that creates it.

A produced topic must also take every batch the producer may send: aiokafka refuses a record
over `max_request_size` before sending it, but a batch the broker refuses after it was sent
(over the topic's `max.message.bytes`) breaks the idempotent producer's sequence for that
partition until the process restarts (aiokafka 0.14 does not bump the epoch, KIP-360).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any
from unittest.mock import Mock

from faststream.kafka import KafkaBroker

from alpha_streaming._admin import broker_admin, max_message_bytes, topic_partitions
from alpha_streaming._errors import ConfigError, UnknownTopicError

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
    admin = broker_admin(broker)
    try:
        existing = await topic_partitions(admin, wanted)
        missing = [t for t in wanted if t not in existing]
        if missing:
            roles = ", ".join(f"{t!r} ({'consumed' if t in consumed else 'produced'})" for t in missing)
            raise UnknownTopicError(
                f"service {service!r} cannot start: missing on the cluster at {_bootstrap_of(broker)}: "
                f"{roles}; create them with: {bootstrap_hint(missing)}"
            )
        await _require_room(broker, admin, service, dict.fromkeys(produced))
    except (UnknownTopicError, ConfigError) as problem:
        await broker.stop()
        # One formatted line ahead of the traceback `faststream run` prints.
        log.error("%s", problem)
        raise
    except BaseException:
        await broker.stop()
        raise


async def _require_room(broker: KafkaBroker, admin: Any, service: str, produced: Iterable[str]) -> None:
    """Every produced topic takes the largest request and batch the producer may send."""
    options = broker._connection_kwargs  # KafkaBroker keeps its producer sizes there (its defaults too)
    sizes = {
        "ALPHA_REDPANDA_MAX_REQUEST_SIZE": options["max_request_size"],
        "ALPHA_REDPANDA_MAX_BATCH_SIZE": options["max_batch_size"],
    }
    largest = max(sizes.values())
    small = {topic: limit for topic in produced if (limit := await max_message_bytes(admin, topic)) < largest}
    if small:
        topics = ", ".join(f"{t!r} (max.message.bytes={limit})" for t, limit in small.items())
        settings = " and ".join(f"{name}={size}" for name, size in sizes.items())
        raise ConfigError(
            f"service {service!r} cannot start: produced topic(s) {topics} refuse what the producer may "
            f"send ({settings}); a refused batch breaks the idempotent producer for its partition "
            f"until a restart. Set both settings to at most {min(small.values())}, or raise the "
            "topics' max.message.bytes"
        )


def _bootstrap_of(broker: KafkaBroker) -> str:
    servers = getattr(broker, "_connection_kwargs", {}).get("bootstrap_servers", "?")
    return ",".join(servers) if isinstance(servers, list | tuple) else str(servers)
