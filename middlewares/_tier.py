"""`EnhancedTier`: one service's enhanced tier — its middlewares, their settings, their lifecycle.

The middlewares, outermost first, in the one order that works:
1. `MetricsMiddleware` (FastStream's `KafkaTelemetryMiddleware` inside it): sees every outcome,
   times the whole processing, retries and backoff included; its span parents every output.
2. `ErrorRoutingMiddleware`: outside envelope and dedup, so an invalid envelope is routed like any
   handler error, and a retry re-runs unwrap, dedup claim and handler together.
3. `EnvelopeMiddleware`: before dedup, which keys on the envelope id it validated.
4. `DeduplicationMiddleware` (only with Redis): claims before the handler, marks done after it and
   its outputs succeeded.
5. `OutputsMiddleware`: publishes the handler's return value and waits for Kafka's ack before the
   done marker and the commit.

A decorator user writes two lines — `broker = tier.broker()` and `tier.install(app)` — and the
rest follows from `install`: at startup every subscriber's ack policy is checked once (it must be
`AckPolicy.MANUAL`: error routing commits) and each gets the revoke listener that commits the
finished work before a rebalance moves its partitions; before the broker stops, pending commits are
flushed while the consumers are still group members; after it stopped, the DLQ producer and the
Prometheus endpoint are released. `StreamServiceBuilder` uses the same object.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker

from alpha_streaming._broker import make_broker
from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import ConsumerSettings, DedupSettings, MetricsSettings, Settings
from middlewares._committer import COMMIT_EVERY
from middlewares._dedup import DeduplicationMiddleware
from middlewares._envelope import EnvelopeMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._metrics import MetricsMiddleware
from middlewares._outputs import OutputsMiddleware
from middlewares._retry import RetryPolicy

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from alpha_streaming._settings import RedpandaSettings
    from middlewares._lease_scripts import RedisClient

__all__ = ("AUTO_COMMIT_EVERY", "EnhancedTier", "enhanced_stack", "wrong_ack_policy")

AUTO_COMMIT_EVERY = COMMIT_EVERY
"""What `commit_every="auto"` means, with or without dedup (commits go out in the background)."""


class EnhancedTier:
    """The enhanced middlewares of one service, configured from `Settings`, with their lifecycle.

    Dedup is on when a `redis` client is given and `settings.dedup.enabled`; metrics follow
    `settings.metrics` unless `metrics=` says otherwise. `dedup` and `consumer` override the
    settings' sections (for callers without a `Settings`).
    """

    def __init__(
        self,
        service: str,
        *,
        settings: Settings | None = None,
        redis: RedisClient | None = None,
        policy: RetryPolicy | None = None,
        metrics: bool | None = None,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        prometheus_port: int | None = None,
        dedup_namespace: str | None = None,
        dedup: DedupSettings | None = None,
        consumer: ConsumerSettings | None = None,
    ) -> None:
        if not service:
            raise ConfigError("EnhancedTier needs the service name, got an empty string")
        self.service = service
        self._redpanda = settings.redpanda if settings is not None else None
        dedup = dedup or (settings.dedup if settings is not None else DedupSettings())
        consumer = consumer or (settings.consumer if settings is not None else ConsumerSettings())
        metric_settings = settings.metrics if settings is not None else MetricsSettings()
        deduplicating = redis is not None and dedup.enabled
        if policy is None:
            policy = RetryPolicy.from_settings(settings.retry) if settings is not None else RetryPolicy()
        self.metrics: MetricsMiddleware | None = None
        if metrics if metrics is not None else metric_settings.enabled:
            port = prometheus_port if prometheus_port is not None else metric_settings.prometheus_port
            self.metrics = MetricsMiddleware(
                service=service,
                meter_provider=meter_provider,
                tracer_provider=tracer_provider,
                prometheus_port=port if meter_provider is None else None,
                prometheus_addr=metric_settings.prometheus_host,
            )
        every = consumer.commit_every
        self.routing = ErrorRoutingMiddleware(
            policy=policy,
            service=service,
            commit_every=every if every != "auto" else AUTO_COMMIT_EVERY,
            commit_interval_s=consumer.commit_interval_s,
        )
        self.dedup: DeduplicationMiddleware | None = None
        if redis is not None and deduplicating:
            namespace = dedup_namespace or service.replace(":", "-")
            self.dedup = DeduplicationMiddleware(redis, namespace=namespace, settings=dedup)
        self.middlewares: tuple[Any, ...] = tuple(
            m
            for m in (
                self.metrics,
                self.routing,
                EnvelopeMiddleware(source=service),
                self.dedup,
                OutputsMiddleware(),
            )
            if m is not None
        )
        self.listener = _RevokeListener(self.routing)

    def broker(
        self, config: RedpandaSettings | None = None, *, outer: Sequence[Any] = (), **options: Any
    ) -> KafkaBroker:
        """A `KafkaBroker` carrying this tier, its subscribers `AckPolicy.MANUAL` by default.

        `config` defaults to the tier's `settings.redpanda` (else read from the environment);
        `outer` middlewares go outside the tier's; `options` go to `KafkaBroker` as they are.
        """
        if config is None:
            config = self._redpanda if self._redpanda is not None else Settings().redpanda
        return make_broker(
            config,
            middlewares=(*outer, *self.middlewares),
            ack_policy=AckPolicy.MANUAL,
            **options,
        )

    def install(self, app: FastStream) -> FastStream:
        """Tie the tier to `app`'s lifecycle (startup checks, listener, drain, close); returns `app`."""
        app.on_startup(self._check_and_listen_on(app))
        app.on_shutdown(self.drain)
        app.after_shutdown(self.close)
        return app

    def carried_by(self, broker: Any) -> bool:
        return any(m is self.routing for m in getattr(broker, "middlewares", ()))

    def verify(self, broker: KafkaBroker) -> None:
        """Raise `ConfigError` naming every subscriber whose ack policy is not `AckPolicy.MANUAL`."""
        problems = [p for sub in broker.subscribers if (p := wrong_ack_policy(sub)) is not None]
        if problems:
            raise ConfigError("; ".join(problems))

    async def drain(self) -> None:
        """Commit pending offsets while the consumers are still group members (before the broker stops)."""
        await self.routing.drain()

    async def close(self) -> None:
        """Final commit; release the DLQ producer, lease renewal and metrics (after the broker stopped)."""
        await self.routing.close()
        if self.dedup is not None:
            await self.dedup.close()
        if self.metrics is not None:
            self.metrics.shutdown()

    def _check_and_listen_on(self, app: FastStream) -> Any:
        async def check_and_listen() -> None:
            """Once, before the brokers start: ack policies, and the revoke listener on each subscriber."""
            for broker in app.brokers:
                if not self.carried_by(broker):
                    continue
                assert isinstance(broker, KafkaBroker)
                self.verify(broker)
                for subscriber in broker.subscribers:
                    # Read by the subscriber when it starts its consumer; aiokafka takes one listener.
                    own = getattr(subscriber, "_listener", None)
                    if not _has(own, self.listener):
                        subscriber._listener = (  # type: ignore[attr-defined]
                            self.listener if own is None else _Chained(self.listener, own)
                        )

        return check_and_listen

    def __repr__(self) -> str:
        return f"EnhancedTier(service={self.service!r}, middlewares={self.middlewares!r})"


def enhanced_stack(
    *,
    service: str,
    redis: RedisClient | None = None,
    dedup: DedupSettings | None = None,
    policy: RetryPolicy | None = None,
    metrics: bool = True,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    prometheus_port: int | None = None,
    dedup_namespace: str | None = None,
    commit_every: int | Literal["auto"] = "auto",
    commit_interval_s: float = 0.5,
) -> tuple[Any, ...]:
    """The tier's middlewares alone, for `KafkaBroker(middlewares=...)`; prefer `EnhancedTier`,
    which also ties their lifecycle to the app."""
    return EnhancedTier(
        service,
        redis=redis,
        dedup=dedup,
        policy=policy,
        metrics=metrics,
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        prometheus_port=prometheus_port,
        dedup_namespace=dedup_namespace,
        consumer=ConsumerSettings(commit_every=commit_every, commit_interval_s=commit_interval_s),
    ).middlewares


def wrong_ack_policy(subscriber: Any) -> str | None:
    """Why `subscriber` cannot run under error routing, or None if its ack policy is right."""
    policy = getattr(subscriber, "ack_policy", None)
    if policy is AckPolicy.MANUAL:
        return None
    topics = ", ".join(getattr(subscriber, "topic_names", None) or ()) or repr(subscriber)
    return (
        f"subscriber on {topics} (group {getattr(subscriber, 'group_id', None)}) runs with "
        f"ack_policy={policy!r}, but the enhanced tier needs AckPolicy.MANUAL (error routing commits "
        "after processing; any other policy commits before the outcome is known or after a failure, "
        "and loses events). Build the broker with `tier.broker()`, or pass "
        "`ack_policy=AckPolicy.MANUAL` (the enum, not a string) to the subscriber; a KafkaRouter "
        "subscriber must be declared after `include_router` or carry the policy itself."
    )


class _RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits the finished work of the partitions a rebalance takes from a consumer.

    aiokafka awaits `on_partitions_revoked` before the group reassigns anything and still accepts
    this member's commits there. A handler still in flight is not waited for: the commit stops below
    it, the new owner reads the record again, and dedup skips it if it was done. A failed commit
    is logged: the new owner reads from the last commit (records repeated, none lost).
    """

    def __init__(self, routing: ErrorRoutingMiddleware) -> None:
        self._routing = routing

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self._routing.flush_partitions(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


def _has(listener: Any, wanted: Any) -> bool:
    """`listener` is `wanted` or chains it (a restarted app must not chain it again)."""
    return listener is wanted or (isinstance(listener, _Chained) and wanted in listener.listeners)


class _Chained(ConsumerRebalanceListener):  # type: ignore[misc]
    """The tier's listener first (commit what was done), then the user's own."""

    def __init__(self, *listeners: Any) -> None:
        self.listeners: tuple[Any, ...] = listeners

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for listener in self.listeners:
            if inspect.isawaitable(result := listener.on_partitions_revoked(revoked)):
                await result

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for listener in self.listeners:
            if inspect.isawaitable(result := listener.on_partitions_assigned(assigned)):
                await result
