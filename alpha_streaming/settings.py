"""Settings read from keyword arguments or the environment (pydantic-settings).

Environment variables:
- `RedpandaSettings`: prefix `ALPHA_REDPANDA_` (e.g. `ALPHA_REDPANDA_CLIENT_ID`);
  the bootstrap servers also come from plain `KAFKA_BOOTSTRAP_SERVERS`, as a comma-separated
  list (`host1:9092,host2:9092`) that becomes one address per item.
- `Settings`: prefix `ALPHA_`, nested fields with `__` (e.g. `ALPHA_DEDUP__LEASE_TTL_S=10`);
  the Redis URL also comes from plain `REDIS_URL`.
Secrets (SASL password, a password inside the Redis URL) never appear in `repr` or `str`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from alpha_streaming.errors import ConfigError

__all__ = (
    "ConsumerSettings",
    "DedupSettings",
    "MetricsSettings",
    "RedpandaSettings",
    "RetrySettings",
    "Settings",
    "mask_url",
    "resolve_commit_every",
)

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Outcomes per coalesced commit with dedup: a Kafka 4 commit costs ~7 ms, so 100 makes it ~0.07 ms
# a message (bench/README.md, "enhanced: what bounds single-message mode").
AUTO_COMMIT_EVERY = 100


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedpandaSettings(BaseSettings):
    """How to reach Kafka/Redpanda; the single source of truth for both tiers' connections."""

    model_config = SettingsConfigDict(env_prefix="ALPHA_REDPANDA_", extra="forbid")

    # A list, never one "a:1,b:2" string: FastStream's KafkaBroker wraps a string into a one-item
    # list that aiokafka never splits. NoDecode hands env strings to the validator, not to JSON.
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_BOOTSTRAP_SERVERS],
        validation_alias=AliasChoices(
            "bootstrap_servers", "ALPHA_REDPANDA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    client_id: str = "alpha-streaming"
    group_id_prefix: str = ""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    # Producer tuning shared by both tiers. Idempotence and acks=all are not settings: always on.
    linger_ms: int = Field(default=5, ge=0)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    max_batch_size: int = Field(default=65536, gt=0)
    request_timeout_ms: int = Field(default=30000, gt=0)

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _servers_are_host_port_list(cls, value: Any) -> Any:
        """Split comma-separated strings (env var, CLI flag, kwargs) into one address per item."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
            return value  # not strings: pydantic's list[str] check names the problem
        servers = [part.strip() for item in items for part in item.split(",") if part.strip()]
        bad = [s for s in servers if not s.rpartition(":")[2].isdigit()]
        if not servers or bad:
            raise ConfigError(
                f"bootstrap_servers must be host:port[,host:port...], got {','.join(items)!r}; "
                "set KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 for the local stack"
            )
        return servers

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> RedpandaSettings:
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and (not self.sasl_mechanism or not self.sasl_username or not self.sasl_password):
            raise ConfigError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism, sasl_username and "
                "sasl_password (ALPHA_REDPANDA_SASL_MECHANISM / _SASL_USERNAME / _SASL_PASSWORD)"
            )
        if not uses_sasl and self.sasl_mechanism:
            raise ConfigError(
                f"sasl_mechanism={self.sasl_mechanism} is set but security_protocol is "
                f"{self.security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        return self

    @property
    def bootstrap_servers_text(self) -> str:
        """The addresses as `host:port,host:port`, for messages and logs (not a list repr)."""
        return ",".join(self.bootstrap_servers)

    def group_id(self, name: str) -> str:
        """A consumer group id with this deployment's prefix."""
        return f"{self.group_id_prefix}{name}"


class DedupSettings(BaseModel):
    """Redis deduplication: lease while in flight, long-lived done marker after success."""

    enabled: bool = True
    lease_ttl_s: float = Field(default=30.0, gt=0)
    done_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    local_cache_size: int = Field(default=10_000, ge=0)
    on_redis_outage: Literal["pause", "fail_open"] = "pause"


class RetrySettings(BaseModel):
    """Default budget for transient errors; `middlewares.RetryPolicy` holds the full policy."""

    max_attempts: int = Field(default=5, ge=1)
    base_delay_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=30.0, ge=0)


def resolve_commit_every(commit_every: int | Literal["auto"], *, dedup: bool) -> int:
    """ "auto": coalesce `AUTO_COMMIT_EVERY` outcomes with dedup, commit each one without it."""
    if commit_every != "auto":
        return commit_every
    return AUTO_COMMIT_EVERY if dedup else 1


class ConsumerSettings(BaseModel):
    """How the builder's subscribers poll and commit (aiokafka's defaults unless set).

    `commit_every` > 1 coalesces offset commits (flushed after that many outcomes, after
    `commit_interval_s`, before any seek, right after a dead-letter write, on partition revoke
    and on shutdown). It needs dedup: records whose commit was pending when a process died come
    again and are skipped as done. The default "auto" is `AUTO_COMMIT_EVERY` (100) with dedup and
    1 (a commit per message) without it; an explicit number > 1 without dedup is refused.
    """

    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    session_timeout_ms: int = Field(default=10_000, gt=0)
    heartbeat_interval_ms: int = Field(default=3_000, gt=0)
    max_poll_records: int | None = Field(default=None, gt=0)
    commit_every: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    commit_interval_s: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> ConsumerSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigError(
                f"consumer.heartbeat_interval_ms={self.heartbeat_interval_ms} must be below "
                f"session_timeout_ms={self.session_timeout_ms} (Kafka advises a third of it)"
            )
        return self


class MetricsSettings(BaseModel):
    enabled: bool = True
    prometheus_port: int | None = Field(default=None, ge=0, le=65535)


class Settings(BaseSettings):
    """Service-wide settings: Kafka connection, Redis, dedup, retries, consumers and metrics."""

    model_config = SettingsConfigDict(env_prefix="ALPHA_", env_nested_delimiter="__", extra="forbid")

    service_name: str = "alpha-service"
    redpanda: RedpandaSettings = Field(default_factory=RedpandaSettings)
    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        validation_alias=AliasChoices("redis_url", "ALPHA_REDIS_URL", "REDIS_URL"),
    )
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(
                f"redis_url must start with redis://, rediss:// or unix://, got {mask_url(value)!r}"
            )
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "redis_url" else value
