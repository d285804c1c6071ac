"""Bad settings raise the project's `ConfigError`, whatever the source, and never echo the input."""

from __future__ import annotations

import pytest

from alpha_streaming import ConfigError, DedupSettings, RedpandaSettings, Settings

SECRET = "s3cret-Pa55-do-not-print"


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: RedpandaSettings(bootstrap_servers="no-port", sasl_password=SECRET), "bootstrap_servers"),
        (lambda: RedpandaSettings(sasl_pasword=SECRET), "sasl_pasword"),  # misspelled: refused by name
        (lambda: RedpandaSettings(security_protocol="SASL_SSL", sasl_password=SECRET), "sasl"),
        (lambda: Settings(redis_url=f"http://u:{SECRET}@cache:6379/0"), "redis_url"),
        (lambda: Settings(dedup={"lease_ttl_s": -1}), "dedup.lease_ttl_s: Input should be greater than 0"),
        (lambda: DedupSettings(lease_ttl_s=60, done_ttl_s=30), "lease_ttl_s < done_ttl_s"),
        (lambda: DedupSettings(outage_pause_s=600), "outage_pause_s"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_field_without_its_value(
    make: object, names: str
) -> None:
    with pytest.raises(ConfigError, match=names) as caught:
        make()  # type: ignore[operator]
    error = caught.value
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert error.__cause__ is None and error.__suppress_context__, (
        "pydantic's error (with inputs) is not chained"
    )


def test_invalid_environment_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHA_CONSUMER__COMMIT_INTERVAL_S", "soon")
    with pytest.raises(ConfigError, match=r"consumer\.commit_interval_s: Input should be a valid number"):
        Settings()


def test_outage_pause_can_be_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHA_DEDUP__OUTAGE_PAUSE_S", "12.5")
    assert Settings().dedup.outage_pause_s == 12.5
