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


def test_exactly_once_refuses_redis_dedup_which_could_skip_the_redo_of_an_aborted_batch() -> None:
    from redis.asyncio import Redis

    with pytest.raises(ConfigError, match="cannot be combined with Redis dedup"):
        EnhancedTier("svc", metrics=False, redis=Redis(), processing_guarantee="exactly_once")
    builder = (
        StreamServiceBuilder("svc", CONFIG)
        .with_processing_guarantee("exactly_once")
        .with_redis(Redis())
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=relay)
    )
    with pytest.raises(ConfigError, match="cannot be combined with Redis dedup"):
        builder.build()


def test_exactly_once_needs_no_redis_client_with_the_default_settings() -> None:
    service = (
        StreamServiceBuilder("svc", CONFIG, Settings())
        .with_processing_guarantee("exactly_once")
        .add_consumer_handler(topics=["a.b.c"], group_id="g", handler_func=relay)
        .build()
    )
    assert service.redis is None
