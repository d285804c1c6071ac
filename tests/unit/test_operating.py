"""Operating it without a cluster: secrets never printed, clear start failures, env typos, versions."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from typing import Any

import pytest
from faststream import FastStream
from faststream.kafka import KafkaBroker, TestKafkaBroker
from pydantic import BaseModel, SecretStr

from alpha_streaming import (
    DedupSettings,
    EventEnvelope,
    KafkaClientError,
    RedpandaConsumer,
    RedpandaProducer,
    RedpandaSettings,
    Settings,
    StreamServiceBuilder,
    make_broker,
)
from alpha_streaming import _env_check as env_check
from alpha_streaming import _envelope as envelope_module
from alpha_streaming._logging import OperatorFormatter
from alpha_streaming._services.health import ServiceHealth
from middlewares import EnhancedTier, EnvelopeMiddleware

REDIS_PASSWORD = "RPW-s3cret-ux"
SASL_PASSWORD = "SASL-s3cret-pw"
CLOSED_PORT = "127.0.0.1:1"  # nothing listens on port 1: a connection error, fast


def secret_settings() -> Settings:
    return Settings(
        redis_url=f"redis://uxr:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        dedup=DedupSettings(enabled=False),
        redpanda=RedpandaSettings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="svc",
            sasl_password=SecretStr(SASL_PASSWORD),
        ),
    )


async def legacy(message: dict[str, Any], topic: str) -> None:
    return None


def assert_no_secret(text: str) -> None:
    assert REDIS_PASSWORD not in text
    assert SASL_PASSWORD not in text


def test_no_dump_repr_or_log_line_shows_a_password() -> None:
    settings = secret_settings()
    record = logging.LogRecord("alpha_streaming.x", logging.INFO, __file__, 1, "settings: %s %r", None, None)
    record.args = (settings, settings)
    for text in (
        repr(settings),
        str(settings),
        f"{settings}",
        json.dumps(settings.model_dump(mode="json")),
        str(settings.model_dump()),
        settings.model_dump_json(),
        OperatorFormatter().format(record),
        OperatorFormatter(as_json=True).format(record),
    ):
        assert_no_secret(text)
    assert "redis://uxr:***@127.0.0.1:6379/0" in settings.model_dump_json()
    # The attribute itself stays usable to connect.
    assert settings.redis_url == f"redis://uxr:{REDIS_PASSWORD}@127.0.0.1:6379/0"


def test_the_asyncapi_document_and_health_show_no_password() -> None:
    settings = secret_settings()
    service = (
        StreamServiceBuilder("risk", settings=settings)
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="g", handler_func=legacy)
        .add_producer(topics=["paper.signals.validated"])
        .build()
    )
    document = service.app.schema.to_specification().to_json()
    assert "paper.signals.raw" in document
    assert_no_secret(document)
    health = ServiceHealth("risk", True, False, False, missing_topics=("paper.signals.raw",))
    assert_no_secret(json.dumps(health.to_dict()))


def _built_service(config: RedpandaSettings) -> Any:
    settings = Settings(dedup=DedupSettings(enabled=False), redpanda=config)
    return (
        StreamServiceBuilder("risk", settings=settings)
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="g", handler_func=legacy)
        .add_producer(topics=["paper.signals.validated"])
        .build()
    )


def _decorator_app(config: RedpandaSettings) -> Any:
    tier = EnhancedTier("risk", metrics=False)
    return tier.install(FastStream(tier.broker(config)))


@pytest.mark.parametrize(
    "unit",
    [
        _built_service,
        _decorator_app,
        RedpandaProducer,
        lambda config: RedpandaConsumer(config, topics=["paper.signals.raw"], group_id="g"),
    ],
    ids=["builder", "decorator", "producer", "consumer"],
)
async def test_a_bad_bootstrap_address_fails_at_once_clearly_and_leaks_no_client(unit: Any) -> None:
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KafkaClientError, match=r"cannot connect to Kafka.*Unable to bootstrap.*check"):
            await unit(RedpandaSettings(bootstrap_servers=CLOSED_PORT)).start()
        await asyncio.sleep(0)
        gc.collect()
    assert time.monotonic() - started < 10
    assert not [w for w in caught if "Unclosed" in str(w.message)]


def test_health_names_missing_topics_and_the_command_that_creates_them() -> None:
    health = ServiceHealth("risk", True, True, None, missing_topics=("paper.signals.validated",))
    assert not health.ready
    (problem,) = health.problems
    assert "paper.signals.validated do not exist" in problem
    assert "alpha-streaming topics bootstrap --topic paper.signals.validated" in problem
    assert health.to_dict()["missing_topics"] == ["paper.signals.validated"]


def test_a_misspelt_alpha_variable_is_logged_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(env_check, "_warned", set())
    monkeypatch.setenv("ALPHA_DEDUP__LEASE_TTL", "5")
    monkeypatch.setenv("ALPHA_DEDUP__ENABLED", "false")  # a real one: not reported
    with caplog.at_level(logging.WARNING, logger="alpha_streaming.settings"):
        Settings()
        Settings()
    warned = [r.getMessage() for r in caplog.records if r.name == "alpha_streaming.settings"]
    assert warned == [
        "environment variable ALPHA_DEDUP__LEASE_TTL is not a setting and is ignored; "
        "did you mean ALPHA_DEDUP__LEASE_TTL_S?"
    ]


def test_before_logging_is_configured_the_warning_still_has_time_level_and_logger() -> None:
    env = {**os.environ, "ALPHA_RETRY__MAX_ATTEMPT": "3"}
    result = subprocess.run(
        [sys.executable, "-c", "from alpha_streaming import Settings; Settings()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert re.fullmatch(
        r"\S+\+00:00 WARNING alpha_streaming\.settings: environment variable ALPHA_RETRY__MAX_ATTEMPT "
        r"is not a setting and is ignored; did you mean ALPHA_RETRY__MAX_ATTEMPTS\?\n",
        result.stderr,
    ), result.stderr


def test_max_request_size_reaches_the_producer() -> None:
    broker = make_broker(RedpandaSettings(max_request_size=5_000_000))
    assert broker._connection_kwargs["max_request_size"] == 5_000_000


class Fill(BaseModel):
    qty: int


async def test_a_newer_envelope_version_is_processed_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(envelope_module, "_newer_versions_seen", set())
    broker = KafkaBroker(middlewares=[EnvelopeMiddleware(source="svc")])
    handled: list[Fill] = []

    @broker.subscriber("paper.orders.filled", group_id="g")
    async def handle(fill: Fill) -> None:
        handled.append(fill)

    newer = {**json.loads(EventEnvelope.create(type="fill", data={"qty": 1}, source="up").to_bytes())}
    newer.update(version=envelope_module.ENVELOPE_VERSION + 1, added_later={"x": 1})
    with caplog.at_level(logging.WARNING, logger="alpha_streaming._envelope"):
        async with TestKafkaBroker(broker) as br:
            for _ in range(2):
                await br.publish(
                    json.dumps(newer).encode(), "paper.orders.filled", headers={"x-event-id": newer["id"]}
                )
    assert handled == [Fill(qty=1), Fill(qty=1)]
    warned = [r.getMessage() for r in caplog.records if r.name == "alpha_streaming._envelope"]
    assert len(warned) == 1
    assert "envelope version 2 from up is newer than this code's 1" in warned[0]
