"""A refused secure connection says why, the same way on every path, and leaves no client open.

Paths: direct producer, direct consumer, admin (`connected_broker`), a built service's start, and
the CLI. Causes: a certificate for another host, an unknown CA, a wrong SASL password (SCRAM and
PLAIN), an mTLS listener reached without a client certificate.
"""

from __future__ import annotations

import asyncio
import gc
import re
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from alpha_streaming import (
    DedupSettings,
    KafkaClientError,
    RedpandaConsumer,
    RedpandaProducer,
    RedpandaSettings,
    Settings,
    StreamServiceBuilder,
    cli,
    connected_broker,
)
from tests.integration.secure.conftest import SecureCluster

pytestmark = pytest.mark.secure
runner = CliRunner()
AUTH = "check ALPHA_REDPANDA_SASL_USERNAME/_PASSWORD"
# case: (listener, setting overrides, fragments the message must hold)
CASES: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "other_host": (
        "other_host",
        {},
        ("TLS certificate verification failed: IP address mismatch", "subjectAltName"),
    ),
    "unknown_ca": (
        "ssl",
        {"ssl_cafile": "rogue-ca.pem"},
        ("TLS certificate verification failed: self-signed certificate", "ALPHA_REDPANDA_SSL_CAFILE"),
    ),
    "scram_password": (
        "scram",
        {"sasl_password": "wrong-password"},
        ("authentication failed (SASL SCRAM-SHA-512 as 'alice')", AUTH),
    ),
    "plain_password": (
        "plain",
        {"sasl_password": "wrong-password"},
        ("authentication failed (SASL PLAIN as 'bob')", AUTH),
    ),
    "mtls_without_certificate": (
        "mtls",
        {"ssl_certfile": None, "ssl_keyfile": None, "ssl_key_password": None},
        ("closed the connection during the handshake", "client certificate", "ALPHA_REDPANDA_SSL_CERTFILE"),
    ),
}


def case_values(secure: SecureCluster, case: str) -> dict[str, Any]:
    listener, overrides, _ = CASES[case]
    if "ssl_cafile" in overrides:
        overrides = {**overrides, "ssl_cafile": secure.file(overrides["ssl_cafile"])}
    return secure.values(listener, **overrides)


async def start_producer(config: RedpandaSettings) -> None:
    async with RedpandaProducer(config):
        pass


async def start_consumer(config: RedpandaSettings) -> None:
    async with RedpandaConsumer(config, topics=["secure.never"], group_id="g"):
        pass


async def open_admin(config: RedpandaSettings) -> None:
    async with connected_broker(config):
        pass


async def start_service(config: RedpandaSettings) -> None:
    async def handle(message: dict[str, Any], topic: str) -> None:
        """Never called: the service cannot connect."""

    settings = Settings(redpanda=config, dedup=DedupSettings(enabled=False))
    service = (
        StreamServiceBuilder("secure-fail", config, settings)
        .add_consumer_handler(topics=["secure.never"], group_id="g", handler_func=handle)
        .build()
    )
    await service.start()


PATHS: dict[str, Callable[[RedpandaSettings], Awaitable[None]]] = {
    "producer": start_producer,
    "consumer": start_consumer,
    "admin": open_admin,
    "builder": start_service,
}


def assert_one_clear_message(text: str, port: str, fragments: tuple[str, ...]) -> None:
    assert text.startswith(f"cannot connect to Kafka at 127.0.0.1:{port}: "), text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} missing in: {text}"
    assert "check --bootstrap-servers" not in text  # the address is right: no misleading hint
    assert not re.search(r"\b(\w+Error): \1\b", text), f"doubled class name in: {text}"


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(CASES))
async def test_failed_connection_says_why_and_closes_what_it_opened(
    secure: SecureCluster, case: str, path: str
) -> None:
    values = case_values(secure, case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KafkaClientError) as raised:
            await PATHS[path](RedpandaSettings(**values))
        await asyncio.sleep(0)
        gc.collect()
    port = values["bootstrap_servers"].rpartition(":")[2]
    assert_one_clear_message(str(raised.value), port, CASES[case][2])
    assert not [w for w in caught if "Unclosed" in str(w.message)]


@pytest.mark.parametrize("case", list(CASES))
async def test_cli_prints_the_same_message(
    secure: SecureCluster, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {k: v for k, v in case_values(secure, case).items() if v is not None}
    for name in [n for n in secure.env("mtls") if n not in {f"ALPHA_REDPANDA_{k.upper()}" for k in values}]:
        monkeypatch.delenv(name, raising=False)
    for name, value in {f"ALPHA_REDPANDA_{k.upper()}": str(v) for k, v in values.items()}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    topic = f"secure.never.{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(runner.invoke, cli.app, ["topics", "bootstrap", "--topic", topic])
    assert result.exit_code == cli.EXIT_ERROR, result.output
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("KafkaClientError: "), result.stderr
    port = values["bootstrap_servers"].rpartition(":")[2]
    assert_one_clear_message(first.removeprefix("KafkaClientError: "), port, CASES[case][2])
    assert "Traceback" not in result.stderr
