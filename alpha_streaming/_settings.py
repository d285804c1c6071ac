"""Settings read from keyword arguments or the environment (pydantic-settings).

Environment variables:
- `RedpandaSettings`: prefix `ALPHA_REDPANDA_` (e.g. `ALPHA_REDPANDA_CLIENT_ID`);
  the bootstrap servers also come from plain `KAFKA_BOOTSTRAP_SERVERS`, as a comma-separated
  list (`host1:9092,host2:9092`) that becomes one address per item.
- `Settings`: prefix `ALPHA_`, nested fields with `__` (e.g. `ALPHA_DEDUP__LEASE_TTL_S=10`);
  the Redis URL also comes from plain `REDIS_URL`.
Secrets (SASL password, a password inside the Redis URL) never appear in `repr`, `str`,
`model_dump()` or `model_dump_json()`: `redis_url` stays a plain string for `Redis.from_url`, and
every serialisation masks its password (a dump is for display; pass the object itself around).
An `ALPHA_*` variable that names no setting is logged as a warning with the closest known name.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from alpha_streaming._env_check import warn_unknown_env
from alpha_streaming._errors import ConfigError
from alpha_streaming._security import SecurityOverride, check_security

__all__ = (
    "MAX_OUTAGE_PAUSE_S",
    "ConsumerSettings",
    "DedupSettings",
    "LogSettings",
    "MetricsSettings",
    "RedpandaSettings",
    "RetrySettings",
    "Settings",
    "mask_url",
)

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Local-only unless asked: /metrics and /health expose topic names and consumer groups.
DEFAULT_LISTEN_HOST = "127.0.0.1"


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _config_error(model: str, exc: ValidationError | SettingsError) -> ConfigError:
    """The project's own error, built without the input values (they may hold secrets)."""
    if isinstance(exc, SettingsError):
        return ConfigError(f"invalid {model}: {exc}")
    return ConfigError(f"invalid {model}: " + "; ".join(_problems(exc)))


def _problems(exc: ValidationError) -> list[str]:
    found: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if nested := _NESTED.fullmatch(message):
            # A section's own ConfigError ("invalid DedupSettings: x: ...") becomes "dedup.x: ..."
            found.extend(f"{where}.{problem}" if where else problem for problem in nested[1].split("; "))
        else:
            found.append(f"{where}: {message}" if where else message)
    return found


_NESTED = re.compile(r"invalid \w+Settings: (.*)", re.DOTALL)


class _Settings(BaseSettings):
    """Settings read from the environment; invalid values raise `ConfigError`, not pydantic's error."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except (ValidationError, SettingsError) as exc:
            error: ConfigError | None = _config_error(type(self).__name__, exc)
        else:
            error = None
        if error is not None:
            raise error from None  # outside `except`: no __context__ holding pydantic's inputs
        warn_unknown_env(RedpandaSettings, Settings)


class _Section(BaseModel):
    """A nested settings section; invalid values raise `ConfigError`, like `_Settings`."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(type(self).__name__, exc) from None


class RedpandaSettings(_Settings):
    """How to reach Kafka/Redpanda; the single source of truth for both tiers' connections."""

    model_config = SettingsConfigDict(
        env_prefix="ALPHA_REDPANDA_", extra="forbid", arbitrary_types_allowed=True
    )

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
    # TLS (SSL, SASL_SSL): files are opened when the settings are validated (alpha_streaming._security).
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    security: SecurityOverride | None = Field(default=None, exclude=True, repr=False)
    """For what settings cannot express: an `ssl.SSLContext`, or a FastStream security object."""
    # Producer tuning shared by both tiers. Idempotence and acks=all are not settings: always on.
    linger_ms: int = Field(default=5, ge=0)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    max_batch_size: int = Field(default=65536, gt=0)
    max_request_size: int = Field(default=1_048_576, gt=0)
    """Largest request the producer sends (bytes); raise it with the broker's `message.max.bytes`."""
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
    def _security_is_consistent(self) -> RedpandaSettings:
        check_security(self)
        return self

    @property
    def bootstrap_servers_text(self) -> str:
        """The addresses as `host:port,host:port`, for messages and logs (not a list repr)."""
        return ",".join(self.bootstrap_servers)

    def group_id(self, name: str) -> str:
        """A consumer group id with this deployment's prefix."""
        return f"{self.group_id_prefix}{name}"


# Half of aiokafka's default max_poll_interval_ms (300 s): a paused consumer keeps its group.
MAX_OUTAGE_PAUSE_S = 150.0


class DedupSettings(_Section):
    """Redis deduplication: a lease while in flight, then a done marker kept for `window_s`.

    `window_s`: how long after an event is done a copy of it is still recognised (README, "The
    dedup window"). The default hour covers what redelivers: a crash or rebalance (seconds to
    minutes) and an upstream service re-running after its own restart; a DLQ replay runs again
    by design. Redis holds ~30 bytes per event of the window. `done_ttl_s` is its former name,
    still read. `outage_pause_s`: how long one message waits for Redis to come back before it is
    redelivered (`on_redis_outage="pause"`); bounded so a paused consumer stays in its group.
    """

    enabled: bool = True
    lease_ttl_s: float = Field(default=30.0, gt=0)
    window_s: float = Field(default=3600.0, gt=0)
    done_ttl_s: float | None = Field(default=None, gt=0)
    """Deprecated name of `window_s` (read when `window_s` is not given); reads back as `window_s`."""
    local_cache_size: int = Field(default=10_000, ge=0)
    on_redis_outage: Literal["pause", "fail_open"] = "pause"
    outage_pause_s: float = Field(default=30.0, gt=0, le=MAX_OUTAGE_PAUSE_S)

    @model_validator(mode="after")
    def _lease_shorter_than_window(self) -> DedupSettings:
        name = "window_s"
        if self.done_ttl_s is not None and "window_s" not in self.model_fields_set:
            self.window_s, name = self.done_ttl_s, "done_ttl_s"
        elif self.done_ttl_s is not None and self.done_ttl_s != self.window_s:
            raise ConfigError(
                f"dedup: done_ttl_s is the former name of window_s; give one, got "
                f"window_s={self.window_s}, done_ttl_s={self.done_ttl_s}"
            )
        self.done_ttl_s = self.window_s
        if self.window_s <= self.lease_ttl_s:
            raise ConfigError(
                f"dedup needs lease_ttl_s < {name}, got lease_ttl_s={self.lease_ttl_s}, "
                f"{name}={self.window_s}"
            )
        return self


class RetrySettings(_Section):
    """Default budget for transient errors; `middlewares.RetryPolicy` holds the full policy."""

    max_attempts: int = Field(default=5, ge=1)
    base_delay_s: float = Field(default=1.0, ge=0)
    max_delay_s: float = Field(default=30.0, ge=0)


class ConsumerSettings(_Section):
    """How the builder's subscribers poll and commit (aiokafka's defaults unless set).

    Offsets are committed in the background after `commit_every` outcomes or `commit_interval_s`
    ("auto" = 100), and awaited before any seek, after a dead-letter write, on partition revoke
    and at shutdown; never past a record still in flight. A process that dies repeats what
    finished since the last commit: with dedup those records are skipped as done, without it they
    run again (Kafka's at-least-once). `commit_every=1` awaits a commit per message instead.
    """

    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    session_timeout_ms: int = Field(default=10_000, gt=0)
    heartbeat_interval_ms: int = Field(default=3_000, gt=0)
    max_poll_records: int | None = Field(default=None, gt=0)
    commit_every: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    commit_interval_s: float = Field(default=0.5, gt=0)
    tune_gc: bool = True
    """Once the service started: `gc.freeze()` (full passes no longer walk the startup heap, a
    50-60 ms pause every ~2 s at 1k msg/s) and young collections every 10,000 objects, not 700."""

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> ConsumerSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigError(
                f"consumer.heartbeat_interval_ms={self.heartbeat_interval_ms} must be below "
                f"session_timeout_ms={self.session_timeout_ms} (Kafka advises a third of it)"
            )
        return self


class MetricsSettings(_Section):
    """OpenTelemetry metrics; `prometheus_port` serves `/metrics` on `prometheus_host`."""

    enabled: bool = True
    prometheus_port: int | None = Field(default=None, ge=0, le=65535)
    prometheus_host: str = DEFAULT_LISTEN_HOST


class LogSettings(_Section):
    """How the project's loggers write (`alpha_streaming.configure_logging`).

    `format`: "text" (one line, no colour codes) or "json"
    (one object per line). `configure=False` leaves logging to the application's own setup.
    `access_level`: the level of FastStream's two access lines per message in builder-made
    services ("Received", "Processed"); DEBUG keeps them off the hot path unless asked for.
    """

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    configure: bool = True
    access_level: Literal["DEBUG", "INFO"] = "DEBUG"


class Settings(_Settings):
    """Service-wide settings: Kafka connection, Redis, dedup, retries, consumers and metrics."""

    model_config = SettingsConfigDict(env_prefix="ALPHA_", env_nested_delimiter="__", extra="forbid")

    service_name: str = "alpha-service"
    redpanda: RedpandaSettings = Field(default_factory=RedpandaSettings)
    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        validation_alias=AliasChoices("redis_url", "ALPHA_REDIS_URL", "REDIS_URL"),
    )
    redis_cluster: bool = False
    """`redis_url` names one node of a Redis Cluster (`redis_client` discovers the others)."""
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    instance_id: str = Field(default_factory=socket.gethostname)
    """This instance's stable identity (`ALPHA_INSTANCE_ID`, default the hostname): exactly-once
    derives its transactional id from it, so a restart fences the instance's own zombie."""

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(
                f"redis_url must start with redis://, rediss:// or unix://, got {mask_url(value)!r}"
            )
        return value

    @field_serializer("redis_url")
    def _masked_redis_url(self, value: str) -> str:
        return mask_url(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "redis_url" else value
