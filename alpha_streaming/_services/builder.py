"""`StreamServiceBuilder`: a fluent factory for a service on the enhanced tier.

Every call only records a wish; `build()` resolves them together, so the calls may come in
any order (the original wired only what was configured before `add_consumer_handler`).
`build()` reports every wiring problem at once, each with what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from faststream import FastStream
from faststream.kafka import Topic

from alpha_streaming._asyncapi import EnvelopeAsyncAPI
from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import ConfigError
from alpha_streaming._logging import configure_logging
from alpha_streaming._services.activity import ActivityProbe
from alpha_streaming._services.handlers import HandlerKind, HandlerSpec, inspect_handler, legacy_adapter
from alpha_streaming._services.service import PRODUCER_CONTEXT_KEY, ServiceProducer, StreamService
from alpha_streaming._settings import RedpandaSettings, Settings
from middlewares._exactly_once import ProcessingGuarantee, checked_guarantee
from middlewares._pipeline import checked_concurrency
from middlewares._retry import RetryPolicy
from middlewares._tier import EnhancedTier

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from middlewares._lease_scripts import RedisClient


__all__ = ("StreamServiceBuilder",)

DEFAULT_GRACEFUL_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class _Consumer:
    topics: tuple[str, ...]
    group_id: str
    handler: Any
    concurrency: int


@dataclass(frozen=True, slots=True)
class _Metrics:
    meter_provider: MeterProvider | None
    tracer_provider: TracerProvider | None
    prometheus_port: int | None


class StreamServiceBuilder:
    """Collects the wiring of one service; `build()` validates it and returns a `StreamService`.

    ```python
    service = (StreamServiceBuilder("risk-manager", config, settings)
        .with_redis(redis_client)
        .add_producer(topics=["paper.signals.validated"])
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="risk.signals", handler_func=h)
        .build())
    ```
    Error routing (retries, dead-letter topic, offset commits) is always installed: it is what
    commits offsets. Dedup follows `settings.dedup.enabled` and needs `with_redis(...)`.
    Offsets are committed in the background (`settings.consumer.commit_every`, "auto" = 100, with
    or without dedup) and every subscriber commits its finished work when a rebalance revokes
    its partitions.
    Topics are not created implicitly (a service must not invent one-partition topics);
    `alpha-streaming topics bootstrap --service module:attr` creates `service.topics`. At
    startup the service connects and fails within seconds, naming each missing topic.
    `build()` also applies `settings.log` (`configure_logging`).
    """

    def __init__(
        self,
        service_name: str,
        config: RedpandaSettings | None = None,
        settings: Settings | None = None,
        *,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT_S,
    ) -> None:
        self._name = service_name
        self._settings = settings if settings is not None else Settings()
        self._config = config if config is not None else self._settings.redpanda
        self._graceful_timeout = graceful_timeout
        self._redis: RedisClient | None = None
        self._policy: RetryPolicy | None = None
        self._metrics: _Metrics | None = None
        self._producer_topics: list[str] | None = None
        self._consumers: list[_Consumer] = []
        self._guarantee: ProcessingGuarantee = "at_least_once"

    def with_processing_guarantee(self, guarantee: str) -> Self:
        """`at_least_once` (default) or `exactly_once`: outputs and offsets in one Kafka transaction,
        subscribers read `read_committed` (README, "Exactly-once (Kafka → Kafka)")."""
        self._guarantee = checked_guarantee(guarantee)
        return self

    def with_redis(self, client: RedisClient) -> Self:
        """Use `client` for deduplication (per service and consumer group) and health checks."""
        self._redis = client
        return self

    def with_error_handling(self, policy: RetryPolicy | None = None) -> Self:
        """Choose the retry policy (default: `RetryPolicy.from_settings(settings.retry)`)."""
        self._policy = policy
        return self

    def with_metrics(
        self,
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        prometheus_port: int | None = None,
    ) -> Self:
        """Record OpenTelemetry metrics and spans; `prometheus_port` defaults to the settings'."""
        port = prometheus_port if prometheus_port is not None else self._settings.metrics.prometheus_port
        self._metrics = _Metrics(meter_provider, tracer_provider, port)
        return self

    def add_producer(self, *, topics: Sequence[str] = ()) -> Self:
        """Give the service a producer (`service.producer`, `CurrentProducer` in handlers).

        `topics` declares what it publishes to: listed in `service.topics` (for bootstrap)
        and in the AsyncAPI document. Publishing to other topics is still allowed.
        """
        self._producer_topics = [*(self._producer_topics or []), *topics]
        return self

    def add_consumer_handler(
        self, *, topics: Sequence[str], group_id: str, handler_func: Any, concurrency: int = 1
    ) -> Self:
        """Consume `topics` in consumer group `group_id` (prefixed by the settings) with `handler_func`.

        `concurrency=N` runs up to N handlers at once: records with the same key in order,
        different keys concurrently; 1 (default) keeps the partition's order.
        """
        as_tuple = (topics,) if isinstance(topics, str) else tuple(topics)
        self._consumers.append(_Consumer(as_tuple, group_id, handler_func, concurrency))
        return self

    def build(self) -> StreamService:
        """Validate the wiring and assemble the broker, subscribers, producer and app."""
        specs = self._validate()
        configure_logging(self._settings.log)
        tier = self._tier()
        activity = ActivityProbe()
        # The probe is outermost so it sees how each message finally ended.
        broker = tier.broker(
            self._config,
            outer=(activity,),
            graceful_timeout=self._graceful_timeout,
            log_level=logging.getLevelName(self._settings.log.access_level),
        )
        producer = ServiceProducer(broker, source=self._name) if self._producer_topics is not None else None
        poll = self._settings.consumer
        for consumer, spec in zip(self._consumers, specs, strict=True):
            handler = legacy_adapter(spec.func) if spec.kind is HandlerKind.LEGACY else spec.func
            subscriber = broker.subscriber(
                *(Topic(t, declare=False) for t in consumer.topics),
                group_id=self._config.group_id(consumer.group_id),
                auto_offset_reset="earliest",
                max_poll_interval_ms=poll.max_poll_interval_ms,
                session_timeout_ms=poll.session_timeout_ms,
                heartbeat_interval_ms=poll.heartbeat_interval_ms,
                max_poll_records=poll.max_poll_records,
                isolation_level="read_committed" if self._guarantee == "exactly_once" else "read_uncommitted",
            )
            subscriber(handler)
            tier.set_concurrency(subscriber, consumer.concurrency)
        for topic in self._producer_topics or ():
            broker.publisher(topic, schema=EventEnvelope, title=f"{topic}:{self._name}")
        tier.verify(broker)
        app = tier.install(FastStream(broker, specification=EnvelopeAsyncAPI(title=self._name)))
        if producer is not None:
            app.context.set_global(PRODUCER_CONTEXT_KEY, producer)
        consumed = [t for c in self._consumers for t in c.topics]

        return StreamService(
            name=self._name,
            app=app,
            broker=broker,
            consumed=tuple(dict.fromkeys(consumed)),
            produced=tuple(self._producer_topics or ()),
            producer=producer,
            redis=self._redis,
            activity=activity,
        )

    def _validate(self) -> list[HandlerSpec]:
        problems: list[str] = []
        if not self._name or not self._name.strip():
            problems.append("service_name is empty; pass a name such as 'risk-manager'")
        if self._graceful_timeout <= 0:
            problems.append(f"graceful_timeout must be > 0 seconds, got {self._graceful_timeout}")
        exactly_once = self._guarantee == "exactly_once"
        if self._settings.dedup.enabled and self._redis is None and not exactly_once:
            problems.append(
                "deduplication is enabled (settings.dedup.enabled) but no Redis client was given: "
                "call .with_redis(redis.asyncio.Redis.from_url(settings.redis_url)) "
                "or set ALPHA_DEDUP__ENABLED=false"
            )
        if not self._consumers and self._producer_topics is None:
            problems.append("the service does nothing: add_consumer_handler(...) and/or add_producer()")
        seen_groups: dict[str, int] = {}
        specs: list[HandlerSpec] = []
        for index, consumer in enumerate(self._consumers, 1):
            where = f"add_consumer_handler #{index} (group_id={consumer.group_id!r})"
            problems.extend(f"{where}: {p}" for p in _topic_problems(consumer.topics))
            if not isinstance(consumer.group_id, str) or not consumer.group_id.strip():
                problems.append(f"{where}: group_id must be a non-empty string such as 'risk.signals'")
            elif consumer.group_id in seen_groups:
                first = seen_groups[consumer.group_id]
                problems.append(
                    f"{where}: group_id is already used by add_consumer_handler #{first}; "
                    "give each handler its own group, or list all the topics in one call"
                )
            else:
                seen_groups[consumer.group_id] = index
            try:
                checked_concurrency(consumer.concurrency)
            except ConfigError as exc:
                problems.append(f"{where}: {exc}")
            try:
                spec = inspect_handler(consumer.handler)
            except ConfigError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if PRODUCER_CONTEXT_KEY in spec.context_keys and self._producer_topics is None:
                problems.append(
                    f"{where}: handler {spec.func.__qualname__} takes CurrentProducer but the service "
                    "has no producer; call .add_producer()"
                )
            specs.append(spec)
        problems.extend(
            f"add_producer: {p}" for p in _topic_problems(self._producer_topics or (), empty=False)
        )
        if problems:
            raise ConfigError(
                f"cannot build service {self._name!r}:\n" + "\n".join(f"- {p}" for p in problems)
            )
        return specs

    def _deduplicating(self) -> bool:
        return self._settings.dedup.enabled and self._redis is not None and self._guarantee != "exactly_once"

    def _tier(self) -> EnhancedTier:
        metrics = self._metrics
        return EnhancedTier(
            self._name,
            settings=self._settings,
            redis=self._redis if self._deduplicating() else None,
            policy=self._policy,
            metrics=metrics is not None,
            meter_provider=metrics.meter_provider if metrics else None,
            tracer_provider=metrics.tracer_provider if metrics else None,
            prometheus_port=metrics.prometheus_port if metrics else None,
            processing_guarantee=self._guarantee,
        )


def _topic_problems(topics: Sequence[str], *, empty: bool = True) -> list[str]:
    if empty and not topics:
        return ["topics is empty; pass at least one topic, e.g. topics=['paper.signals.raw']"]
    bad = [t for t in topics if not isinstance(t, str) or not t or t != t.strip() or " " in t]
    found = [f"invalid topic name(s) {bad!r}; use names like 'paper.orders.filled'"] if bad else []
    duplicates = sorted({t for t in topics if list(topics).count(t) > 1})
    if duplicates:
        found.append(f"topic(s) {duplicates!r} listed twice")
    return found
