"""Settings: environment variables, validation that says what to change, secrets never printed."""

from __future__ import annotations

import traceback

import pytest

from alpha_streaming import RedpandaSettings, Settings
from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import mask_url


def test_environment_configures_both_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9093")
    monkeypatch.setenv("ALPHA_REDPANDA_CLIENT_ID", "risk")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("ALPHA_DEDUP__LEASE_TTL_S", "12.5")
    monkeypatch.setenv("ALPHA_DEDUP__ON_REDIS_OUTAGE", "fail_open")
    settings = Settings()
    assert settings.redpanda.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.redpanda.client_id == "risk"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.dedup.lease_ttl_s == 12.5
    assert settings.dedup.on_redis_outage == "fail_open"


def test_prefixed_variable_wins_over_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain:1")
    monkeypatch.setenv("ALPHA_REDPANDA_BOOTSTRAP_SERVERS", "prefixed:2")
    assert RedpandaSettings().bootstrap_servers == ["prefixed:2"]


@pytest.mark.parametrize(
    "given",
    [
        "k1:9092,k2:9093,k3:9094",
        " k1:9092 ,, k2:9093 , k3:9094, ",
        ["k1:9092", "k2:9093", "k3:9094"],
        [" k1:9092", "k2:9093,k3:9094", ""],
        ("k1:9092", "k2:9093", "k3:9094"),
    ],
    ids=["comma-string", "whitespace-and-empties", "list", "list-with-comma-item", "tuple"],
)
def test_bootstrap_servers_become_one_address_per_item(given: str | list[str] | tuple[str, ...]) -> None:
    # aiokafka never splits a list item: "k1:9092,k2:9093" must not survive as one address.
    config = RedpandaSettings(bootstrap_servers=given)
    assert config.bootstrap_servers == ["k1:9092", "k2:9093", "k3:9094"]
    assert config.bootstrap_servers_text == "k1:9092,k2:9093,k3:9094"


@pytest.mark.parametrize("variable", ["KAFKA_BOOTSTRAP_SERVERS", "ALPHA_REDPANDA_BOOTSTRAP_SERVERS"])
def test_bootstrap_env_var_with_commas_is_split(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "ALPHA_REDPANDA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "10.0.0.1:39092, 10.0.0.2:39093,10.0.0.3:39094")
    expected = ["10.0.0.1:39092", "10.0.0.2:39093", "10.0.0.3:39094"]
    assert RedpandaSettings().bootstrap_servers == expected
    assert Settings().redpanda.bootstrap_servers == expected


def test_default_bootstrap_is_a_one_item_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("ALPHA_REDPANDA_BOOTSTRAP_SERVERS", raising=False)
    assert RedpandaSettings().bootstrap_servers == ["127.0.0.1:9092"]


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("k1:9092,localhost", "'k1:9092,localhost'"),
        (" , ,", "' , ,'"),
        (["k1:9092", "k2"], "'k1:9092,k2'"),
        ([], "''"),
        ("k1:port", "'k1:port'"),
    ],
)
def test_bad_bootstrap_entry_names_the_servers_and_the_fix(given: str | list[str], shown: str) -> None:
    with pytest.raises(ConfigError, match="host:port") as caught:
        RedpandaSettings(bootstrap_servers=given)
    message = str(caught.value)
    assert f"got {shown}" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092" in message


def test_bad_bootstrap_env_var_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALPHA_REDPANDA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2")
    with pytest.raises(ConfigError, match="got 'k1:9092,k2'"):
        RedpandaSettings()


def test_non_string_bootstrap_entries_are_rejected() -> None:
    with pytest.raises(ConfigError, match="valid string"):
        RedpandaSettings(bootstrap_servers=[9092])


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
    with pytest.raises(ConfigError, match=hint):
        RedpandaSettings(**kwargs)


def test_bad_redis_url_is_rejected_without_leaking_password() -> None:
    with pytest.raises(ConfigError, match="redis://") as caught:
        Settings(redis_url="http://u:pw123@cache:6379")
    # Nowhere in what a log would show: the message, nor a cause chained into the traceback.
    shown: BaseException | None = caught.value
    while shown is not None:
        assert "pw123" not in "".join(traceback.format_exception_only(shown))
        shown = shown.__cause__ or (None if shown.__suppress_context__ else shown.__context__)


def test_group_id_prefix() -> None:
    assert RedpandaSettings(group_id_prefix="prod.").group_id("risk.signals") == "prod.risk.signals"


def test_commit_every_is_auto_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alpha_streaming._settings import ConsumerSettings

    # What "auto" resolves to, with and without dedup, is the tier's rule: see test_tier.py.
    assert Settings().consumer.commit_every == "auto"
    monkeypatch.setenv("ALPHA_CONSUMER__COMMIT_EVERY", "20")
    assert Settings().consumer.commit_every == 20
    for bad in (0, "sometimes"):
        with pytest.raises(ValueError, match="commit_every"):
            ConsumerSettings(commit_every=bad)  # type: ignore[arg-type]
