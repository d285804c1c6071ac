"""TLS settings are checked when validated (files, protocol, key password, overrides), and no
error path touched by secure connections ever shows a password or the key password."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest
from faststream.security import SASLPlaintext
from typer.testing import CliRunner

from alpha_streaming import (
    ConfigError,
    KafkaClientError,
    RedpandaConsumer,
    RedpandaProducer,
    RedpandaSettings,
    Settings,
    cli,
    connected_broker,
    make_broker,
)
from tests.integration.secure.conftest import SecureCluster

pytestmark = pytest.mark.secure
runner = CliRunner()


def refused(**values: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        RedpandaSettings(**values)
    return str(raised.value)


def test_missing_ca_file_names_path_and_variable() -> None:
    message = refused(security_protocol="SSL", ssl_cafile="/nowhere/ca.pem")
    assert "ssl_cafile='/nowhere/ca.pem' (ALPHA_REDPANDA_SSL_CAFILE): no such file" in message


def test_ca_file_that_is_not_pem_names_path_and_variable(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    message = refused(security_protocol="SSL", ssl_cafile=str(garbage))
    assert f"ssl_cafile={str(garbage)!r} (ALPHA_REDPANDA_SSL_CAFILE) holds no PEM CA certificate" in message


def test_missing_client_certificate_and_key_files_are_named(secure: SecureCluster) -> None:
    tls = {"security_protocol": "SSL", "ssl_cafile": secure.file("ca.pem")}
    assert "(ALPHA_REDPANDA_SSL_CERTFILE): no such file" in refused(**tls, ssl_certfile="/nowhere/c.pem")
    message = refused(**tls, ssl_certfile=secure.file("client.pem"), ssl_keyfile="/nowhere/k.pem")
    assert "ssl_keyfile='/nowhere/k.pem' (ALPHA_REDPANDA_SSL_KEYFILE): no such file" in message


@pytest.mark.parametrize(
    ("password", "says"),
    [
        (None, "the key is encrypted and ssl_key_password is not set"),
        ("wrong", "ssl_key_password does not open the key"),
    ],
)
def test_encrypted_key_without_its_password_is_a_config_error(
    secure: SecureCluster, password: str | None, says: str
) -> None:
    message = refused(**secure.values("mtls", ssl_key_password=password))
    assert says in message
    assert "_SSL_KEY_PASSWORD)" in message


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_settings_with_a_protocol_without_tls_are_refused(secure: SecureCluster, protocol: str) -> None:
    sasl = (
        {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"} if "SASL" in protocol else {}
    )
    message = refused(security_protocol=protocol, ssl_cafile=secure.file("ca.pem"), **sasl)
    assert f"ssl_cafile (ALPHA_REDPANDA_SSL_CAFILE) is set but security_protocol is {protocol}" in message
    assert "ALPHA_REDPANDA_SECURITY_PROTOCOL=SSL" in message


def test_an_ssl_context_needs_a_tls_protocol_and_replaces_the_files(secure: SecureCluster) -> None:
    context = ssl.create_default_context()
    assert "an ssl.SSLContext (security=) is set but security_protocol is PLAINTEXT" in refused(
        security=context
    )
    message = refused(security_protocol="SSL", ssl_cafile=secure.file("ca.pem"), security=context)
    assert "replaces ssl_cafile" in message
    with pytest.raises(ConfigError, match="security_protocol is PLAINTEXT"):
        make_broker(RedpandaSettings(), security=context)


def test_a_security_object_replaces_the_protocol_and_sasl_settings() -> None:
    message = refused(security_protocol="SSL", security=SASLPlaintext("u", "p"))
    assert "security= is a FastStream security object, which replaces security_protocol" in message


def test_cli_reports_a_missing_ca_file_as_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHA_REDPANDA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("ALPHA_REDPANDA_SSL_CAFILE", "/nowhere/ca.pem")
    result = runner.invoke(cli.app, ["topics", "bootstrap", "--topic", "secure.never"])
    assert result.exit_code == cli.EXIT_ERROR, result.output
    assert "ConfigError: " in result.stderr and "(ALPHA_REDPANDA_SSL_CAFILE): no such file" in result.stderr
    assert "Traceback" not in result.stderr


# --- No secret in any error --------------------------------------------------------------

PASSWORD = f"sweep-Pa55-{uuid.uuid4().hex}"
KEY_PASSWORD = f"sweep-KeyPa55-{uuid.uuid4().hex}"


def exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception can show: its chain's str, repr, pydantic errors()/json(), traceback."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        for method in ("errors", "json"):
            if callable(getattr(current, method, None)):
                texts.append(str(getattr(current, method)()))
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return texts


def settings_failures(secure: SecureCluster) -> list[BaseException]:
    attempts: list[dict[str, Any]] = [
        {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_pasword": PASSWORD},
        {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": PASSWORD},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "MD5", "sasl_password": PASSWORD},
        {"ssl_key_password": KEY_PASSWORD, "ssl_certfile": secure.file("client.pem")},
        secure.values("mtls", ssl_key_password=KEY_PASSWORD),
        secure.values("scram", sasl_password=PASSWORD, linger_ms=-1),
    ]
    found: list[BaseException] = []
    for values in attempts:
        with pytest.raises(ConfigError) as raised:
            RedpandaSettings(**values)
        found.append(raised.value)
    with pytest.raises(ConfigError) as nested:
        Settings(redpanda={"sasl_password": PASSWORD, "security_protocol": "nope"})
    return [*found, nested.value]


async def connection_failures(secure: SecureCluster) -> list[BaseException]:
    found: list[BaseException] = []
    for listener in ("scram", "plain"):
        config = secure.settings(listener, sasl_password=PASSWORD)
        starts = [
            RedpandaProducer(config).start(),
            RedpandaConsumer(config, topics=["secure.never"], group_id="g").start(),
            connected_broker(config).__aenter__(),
        ]
        for start in starts:
            with pytest.raises(KafkaClientError) as raised:
                await start
            found.append(raised.value)
    return found


async def test_no_password_or_key_password_in_any_error_or_log(
    secure: SecureCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    errors = [*settings_failures(secure), *await connection_failures(secure)]
    texts = [text for exc in errors for text in exception_texts(exc)]
    for name, value in secure.env("scram", sasl_password=PASSWORD).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    result = await asyncio.to_thread(runner.invoke, cli.app, ["topics", "bootstrap", "--topic", "secure.x"])
    assert result.exit_code == cli.EXIT_ERROR and "authentication failed" in result.stderr
    texts += [result.stdout, result.stderr]
    formatter = logging.Formatter("%(message)s %(args)s")
    texts += [formatter.format(record) for record in caplog.records]
    assert len(errors) == 13 and caplog.records  # every path above ran and logged something
    leaks = [text for text in texts if PASSWORD in text or KEY_PASSWORD in text]
    assert not leaks, leaks[0]


def test_readme_secure_section_names_only_real_variables() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Secure clusters", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"ALPHA_REDPANDA_[A-Z_]*[A-Z]", section))
    known = {f"ALPHA_REDPANDA_{field.upper()}" for field in RedpandaSettings.model_fields}
    assert named and named <= known, named - known
