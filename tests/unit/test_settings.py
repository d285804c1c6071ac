"""Settings: environment variables, validation that says what to change, secrets never printed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alpha_streaming import RedpandaSettings, Settings
from alpha_streaming.settings import mask_url


def test_environment_configures_both_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("ALPHA_REDPANDA_CLIENT_ID", "risk")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("ALPHA_DEDUP__LEASE_TTL_S", "12.5")
    monkeypatch.setenv("ALPHA_DEDUP__ON_REDIS_OUTAGE", "fail_open")
    settings = Settings()
    assert settings.redpanda.bootstrap_servers == "k1:9092,k2:9093"
    assert settings.redpanda.client_id == "risk"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.dedup.lease_ttl_s == 12.5
    assert settings.dedup.on_redis_outage == "fail_open"


def test_prefixed_variable_wins_over_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain:1")
    monkeypatch.setenv("ALPHA_REDPANDA_BOOTSTRAP_SERVERS", "prefixed:2")
    assert RedpandaSettings().bootstrap_servers == "prefixed:2"


def test_secrets_never_printed() -> None:
    settings = Settings(
        redis_url="redis://svc:hunter2@cache:6379/0",
        redpanda=RedpandaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="svc",
            sasl_password="s3cr3t!",
        ),
    )
    for text in (repr(settings), str(settings), repr(settings.redpanda)):
        assert "hunter2" not in text
        assert "s3cr3t!" not in text
    assert "redis://svc:***@cache:6379/0" in repr(settings)
    assert settings.redpanda.sasl_password is not None
    assert settings.redpanda.sasl_password.get_secret_value() == "s3cr3t!"


def test_mask_url_leaves_password_free_urls_alone() -> None:
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"bootstrap_servers": "localhost"}, "host:port"),
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "use SASL_PLAINTEXT or SASL_SSL"),
        ({"linger_ms": -1}, "linger_ms"),
        ({"compression_type": "brotli"}, "compression_type"),
    ],
)
def test_bad_kafka_settings_say_what_to_change(kwargs: dict[str, object], hint: str) -> None:
    with pytest.raises(ValidationError, match=hint):
        RedpandaSettings(**kwargs)


def test_bad_redis_url_is_rejected_without_leaking_password() -> None:
    with pytest.raises(ValidationError, match="redis://") as caught:
        Settings(redis_url="http://u:pw123@cache:6379")
    assert "pw123" not in str(caught.value).split("input_value")[0]


def test_group_id_prefix() -> None:
    assert RedpandaSettings(group_id_prefix="prod.").group_id("risk.signals") == "prod.risk.signals"


def test_commit_every_is_auto_by_default_and_resolves_by_dedup(monkeypatch: pytest.MonkeyPatch) -> None:
    from alpha_streaming.settings import AUTO_COMMIT_EVERY, ConsumerSettings, resolve_commit_every

    assert Settings().consumer.commit_every == "auto"
    assert resolve_commit_every("auto", dedup=True) == AUTO_COMMIT_EVERY
    assert resolve_commit_every("auto", dedup=False) == 1
    assert resolve_commit_every(7, dedup=False) == 7
    monkeypatch.setenv("ALPHA_CONSUMER__COMMIT_EVERY", "20")
    assert Settings().consumer.commit_every == 20
    for bad in (0, "sometimes"):
        with pytest.raises(ValueError, match="commit_every"):
            ConsumerSettings(commit_every=bad)  # type: ignore[arg-type]
