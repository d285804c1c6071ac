"""`processing_guarantee`: validated by name; exactly-once wires a transactional, read_committed service."""

from __future__ import annotations

from typing import Any

import pytest

from alpha_streaming._errors import ConfigError
from alpha_streaming._services.builder import StreamServiceBuilder
from alpha_streaming._settings import DedupSettings, RedpandaSettings, Settings
from middlewares._tier import EnhancedTier

CONFIG = RedpandaSettings(bootstrap_servers="127.0.0.1:1")


async def relay(message: dict[str, Any], topic: str) -> None:
    return None


def test_the_builder_refuses_an_unknown_guarantee_naming_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"'at_least_once', 'exactly_once'.*'exactly-once'"):
        StreamServiceBuilder("svc", CONFIG).with_processing_guarantee("exactly-once")


def test_exactly_once_builds_a_transactional_producer_and_read_committed_subscribers() -> None:
    settings = Settings(dedup=DedupSettings(enabled=False), instance_id="pod-3")
    service = (
        StreamServiceBuilder("svc", CONFIG, settings)
        .with_processing_guarantee("exactly_once")
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=relay)
        .build()
    )
    (subscriber,) = service.broker.subscribers
    assert subscriber._connection_args["isolation_level"] == "read_committed"  # type: ignore[attr-defined]
    assert service.broker._connection_kwargs["transactional_id"] == "svc-pod-3"


def test_at_least_once_stays_the_default_without_a_transactional_producer() -> None:
    tier = EnhancedTier("svc", metrics=False)
    broker = tier.broker(CONFIG)
    assert tier.guarantee == "at_least_once" and tier.transactions is None
    assert broker._connection_kwargs.get("transactional_id") is None


def test_exactly_once_with_redis_dedup_defers_done_markers_to_the_transactions_commit() -> None:
    """Both on: dedup's done markers wait for the commit (an aborted batch's redo runs again), and
    the DLQ write is not guarded by a marker (the transaction makes it atomic with its commit)."""
    from redis.asyncio import Redis

    from middlewares._dead_letter_once import DeadLetterOnce

    tier = EnhancedTier("svc", metrics=False, redis=Redis(), processing_guarantee="exactly_once")
    assert tier.dedup is not None and tier.transactions is not None
    assert tier.dedup.after_commit == tier.transactions.after_commit
    assert not isinstance(tier.routing.dead_letter, DeadLetterOnce)
    builder = (
        StreamServiceBuilder("svc", CONFIG)
        .with_processing_guarantee("exactly_once")
        .with_redis(Redis())
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=relay)
    )
    builder.build()  # the builder accepts the pair too (it wires the same tier)


def test_exactly_once_needs_no_redis_client_with_the_default_settings() -> None:
    service = (
        StreamServiceBuilder("svc", CONFIG, Settings())
        .with_processing_guarantee("exactly_once")
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=relay)
        .build()
    )
    assert service.redis is None
