"""`EnhancedTier`: one service's enhanced tier — its middlewares, their settings, their lifecycle.

The middlewares, outermost first, in the one order that works:
1. `MetricsMiddleware` (FastStream's `KafkaTelemetryMiddleware` inside it): sees every outcome,
   times the whole processing, retries and backoff included; its span parents every output.
2. `ErrorRoutingMiddleware`: outside envelope and dedup, so an invalid envelope is routed like any
   handler error, and a retry re-runs unwrap, dedup claim and handler together.
3. `EnvelopeMiddleware`: before dedup, which keys on the envelope id it validated.
4. `DeduplicationMiddleware` (only with Redis): claims before the handler, marks done after it and
   its outputs succeeded.
5. The pipeline's gate (`_pipeline`): a handler starts after the previous record of its key ended.
6. `OutputsMiddleware`: publishes the handler's return value and waits for Kafka's ack before the
   done marker and the commit.

A decorator user writes two lines — `broker = tier.broker()` and `tier.install(app)` — and the
rest follows from `install`: at startup every subscriber's ack policy is checked once (it must be
`AckPolicy.MANUAL`: error routing commits), each single-message subscriber is pipelined
(`concurrency`, `set_concurrency`) and each gets the revoke listener that finishes and commits
the work of partitions a rebalance moves; before the broker stops, the records in flight finish
and are committed while the consumers are still group members; after it stopped, the DLQ producer
and the Prometheus endpoint are released. Once started, the garbage collector is tuned for a
service (`_gc_tuning`). `StreamServiceBuilder` uses the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker

from alpha_streaming._broker import make_broker, raw_producer
from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import ConsumerSettings, DedupSettings, MetricsSettings, Settings
from alpha_streaming._topic_check import declared_topics, require_topics
from middlewares._committer import COMMIT_EVERY
from middlewares._dead_letter_once import DeadLetterOnce
from middlewares._dedup import DeduplicationMiddleware
from middlewares._envelope import EnvelopeMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._exactly_once import checked_guarantee, exactly_once, read_committed, transactional_id
from middlewares._gc_tuning import tune_garbage_collector
from middlewares._metrics import MetricsMiddleware
from middlewares._outputs import OutputsMiddleware
from middlewares._pipeline import Pipeline, checked_concurrency
from middlewares._rebalance import Chained, RevokeListener, has_listener
from middlewares._retry import RetryPolicy
from middlewares._transactions import Transactions

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from alpha_streaming._settings import RedpandaSettings
    from middlewares._lease_scripts import RedisClient

__all__ = ("AUTO_COMMIT_EVERY", "EnhancedTier", "enhanced_stack", "wrong_ack_policy")

AUTO_COMMIT_EVERY = COMMIT_EVERY
"""What `commit_every="auto"` means, with or without dedup (commits go out in the background)."""
# How long shutdown waits for the records in flight before the broker stops.
DRAIN_TIMEOUT_S = 30.0


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
        concurrency: int = 1,
        processing_guarantee: str = "at_least_once",
        instance_id: str | None = None,
    ) -> None:
        """`processing_guarantee="exactly_once"`: Kafka transactions (`_transactions`); the
        transactional id is `{service}-{instance_id}` (default `settings.instance_id`)."""
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
        self.guarantee = checked_guarantee(processing_guarantee)
        self.transactions: Transactions | None = None
        self.transactional_id: str | None = None
        if self.guarantee == "exactly_once":
            self.transactions = exactly_once(self.routing)
            instance = instance_id or (settings.instance_id if settings is not None else None)
            self.transactional_id = transactional_id(service, instance)
        self.pipeline = Pipeline(begin=self.routing.commits.begin, barrier=self.transactions)
        if self.transactions is not None:
            self.transactions.supersede = self.pipeline.supersede
        self.concurrency = checked_concurrency(concurrency)
        self.dedup: DeduplicationMiddleware | None = None
        if redis is not None and deduplicating:
            namespace = dedup_namespace or service.replace(":", "-")
            self.dedup = DeduplicationMiddleware(redis, namespace=namespace, settings=dedup)
            if self.transactions is not None:  # done markers once the outputs are committed
                self.dedup.after_commit = self.transactions.after_commit
            else:  # (a transaction makes the DLQ write and its commit atomic already)
                self.routing.dead_letter = DeadLetterOnce(self.routing.dead_letter, self.dedup)
        self.middlewares: tuple[Any, ...] = tuple(
            m
            for m in (
                self.metrics,
                self.routing,
                EnvelopeMiddleware(source=service),
                self.dedup,
                self.pipeline.gate,
                OutputsMiddleware(unconfirmed=self.transactions),
            )
            if m is not None
        )
        self.listener = RevokeListener(self.routing, self.pipeline)
        self._tune_gc = consumer.tune_gc

    def broker(
        self, config: RedpandaSettings | None = None, *, outer: Sequence[Any] = (), **options: Any
    ) -> KafkaBroker:
        """A `KafkaBroker` carrying this tier, its subscribers `AckPolicy.MANUAL` by default.

        `config` defaults to the tier's `settings.redpanda` (else read from the environment);
        `outer` middlewares go outside the tier's; `options` go to `KafkaBroker` as they are.
        """
        if config is None:
            config = self._redpanda if self._redpanda is not None else Settings().redpanda
        if self.transactions is not None:
            options["transactional_id"] = self.transactional_id
        broker = make_broker(
            config,
            middlewares=(*outer, *self.middlewares),
            ack_policy=AckPolicy.MANUAL,
            **options,
        )
        if self.transactions is not None:
            self.transactions.producer_of = lambda: raw_producer(broker)
        return broker

    def install(self, app: FastStream) -> FastStream:
        """Tie the tier to `app`'s lifecycle (startup checks, listener, drain, close); returns `app`."""
        app.on_startup(self._check_and_listen_on(app))
        if self.transactions is not None:
            self.transactions.on_fenced = app.exit
        app.after_startup(self._watch_lag_on(app))
        if self._tune_gc:
            app.after_startup(tune_garbage_collector)
        app.on_shutdown(self.drain)
        app.after_shutdown(self.close)
        return app

    def set_concurrency(self, subscriber: Any, concurrency: int) -> None:
        """Run up to `concurrency` handlers of `subscriber` at once, in order per record key.

        The tier's own `concurrency` (default 1: one handler at a time, in partition order)
        applies to every other single-message subscriber.
        """
        self.pipeline.set_concurrency(subscriber, concurrency)

    def carried_by(self, broker: Any) -> bool:
        return any(m is self.routing for m in getattr(broker, "middlewares", ()))

    def verify(self, broker: KafkaBroker) -> None:
        """Raise `ConfigError` naming every subscriber whose ack policy is not `AckPolicy.MANUAL`."""
        problems = [p for sub in broker.subscribers if (p := wrong_ack_policy(sub)) is not None]
        if problems:
            raise ConfigError("; ".join(problems))

    async def drain(self) -> None:
        """Finish the records in flight and commit, while the consumers are still group members
        (before the broker stops)."""
        await self.pipeline.drain(DRAIN_TIMEOUT_S)
        await self.routing.drain()

    async def close(self) -> None:
        """Final commit; release the DLQ producer, lease renewal and metrics (after the broker stopped)."""
        await self.pipeline.close()
        await self.routing.close()
        if self.dedup is not None:
            await self.dedup.close()
        if self.metrics is not None:
            self.metrics.shutdown()

    def _carried(self, app: FastStream) -> list[KafkaBroker]:
        return [b for b in app.brokers if isinstance(b, KafkaBroker) and self.carried_by(b)]

    def _watch_lag_on(self, app: FastStream) -> Any:
        async def watch_lag() -> None:
            """Lag for every assigned partition, not only those that processed a message."""
            if (metrics := self.metrics) is not None:
                for broker in self._carried(app):
                    metrics.instruments.lag.watch(metrics.service, broker)

        return watch_lag

    def _check_topics_on(self, app: FastStream) -> Any:
        async def check_topics() -> None:
            """Kafka answers and every consumed and declared produced topic exists, or a clear error."""
            for broker in self._carried(app):
                consumed, produced = declared_topics(broker)
                await require_topics(broker, service=self.service, consumed=consumed, produced=produced)

        return check_topics

    def _check_and_listen_on(self, app: FastStream) -> Any:
        topic_check: list[Any] = []

        async def check_and_listen() -> None:
            """Once, before the brokers start: ack policies, the pipeline and revoke listener; the
            topic check goes last, after the app's own startup hooks (which may create topics):
            FastStream runs a hook added while its hooks run."""
            if not topic_check:
                topic_check.append(app.on_startup(self._check_topics_on(app)))
            for broker in self._carried(app):
                self.verify(broker)
                for subscriber in broker.subscribers:
                    self.pipeline.attach(subscriber, self.concurrency)
                    if self.transactions is not None:
                        read_committed(subscriber, attached=self.pipeline.attached(subscriber))
                    # Read by the subscriber when it starts its consumer; aiokafka takes one listener.
                    own = getattr(subscriber, "_listener", None)
                    if not has_listener(own, self.listener):
                        subscriber._listener = (  # type: ignore[attr-defined]
                            self.listener if own is None else Chained(self.listener, own)
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
