"""`enhanced_stack`: the enhanced tier's middlewares in the one order that works.

Outermost first:
1. `MetricsMiddleware` (with FastStream's `KafkaTelemetryMiddleware` inside it, outermost of
   all): it must see every outcome, including dead-lettered and redelivered messages, and time
   the whole processing, retries and backoff included; its consumer span is the parent of
   everything published while the message is handled.
2. `ErrorRoutingMiddleware`: outside envelope and dedup, so an invalid envelope is routed to
   the DLQ like any handler error, and a retry re-runs unwrap, dedup claim and handler together
   (dedup released its lease on the failure, so the retry can claim it again).
3. `EnvelopeMiddleware`: before dedup, because dedup keys on the envelope id it validated.
4. `DeduplicationMiddleware` (only with Redis), right around the handler: it claims just
   before the handler runs and marks done right after it succeeded.

Enhanced subscribers must run with `AckPolicy.MANUAL` (error routing commits). `enhanced_broker`
builds a broker that has it as the default; `verify_enhanced_broker` rejects any subscriber
that does not (call it before starting; the builder and the orchestrator do).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faststream.middlewares import AckPolicy

from alpha_streaming.broker import make_broker
from alpha_streaming.errors import ConfigError
from alpha_streaming.settings import DedupSettings
from middlewares.dedup import DeduplicationMiddleware
from middlewares.envelope import EnvelopeMiddleware
from middlewares.error_routing import ErrorRoutingMiddleware, wrong_ack_policy
from middlewares.metrics import MetricsMiddleware
from middlewares.retry import RetryPolicy

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from redis.asyncio import Redis

    from alpha_streaming.settings import RedpandaSettings

__all__ = ("close_stack", "enhanced_broker", "enhanced_stack", "verify_enhanced_broker")


def enhanced_stack(
    *,
    service: str,
    redis: Redis | None = None,
    dedup: DedupSettings | None = None,
    policy: RetryPolicy | None = None,
    metrics: bool = True,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    prometheus_port: int | None = None,
    dedup_namespace: str | None = None,
    commit_every: int = 1,
    commit_interval_s: float = 0.5,
) -> tuple[Any, ...]:
    """The enhanced middlewares for `KafkaBroker(middlewares=...)` / `KafkaRouter(middlewares=...)`.

    Dedup is included only when `redis` is given (keys namespaced by `dedup_namespace`, default
    the service name); metrics only when `metrics` is true. `commit_every` > 1 coalesces offset
    commits (see `ErrorRoutingMiddleware`); it is refused without dedup, which makes it safe.
    """
    if not service:
        raise ConfigError("enhanced_stack(service=...) needs the service name, got an empty string")
    stack: list[Any] = []
    if metrics:
        stack.append(
            MetricsMiddleware(
                service=service,
                meter_provider=meter_provider,
                tracer_provider=tracer_provider,
                prometheus_port=prometheus_port,
            )
        )
    if commit_every > 1 and redis is None:
        raise ConfigError(
            f"commit_every={commit_every} coalesces commits, which is only safe with dedup (a record "
            "whose commit was pending would run again after a crash); pass `redis=` or commit_every=1"
        )
    stack.append(
        ErrorRoutingMiddleware(
            policy=policy or RetryPolicy(),
            service=service,
            commit_every=commit_every,
            commit_interval_s=commit_interval_s,
        )
    )
    stack.append(EnvelopeMiddleware(source=service))
    if redis is not None:
        settings = dedup or DedupSettings()
        if settings.enabled:
            stack.append(
                DeduplicationMiddleware.from_settings(
                    redis, namespace=dedup_namespace or service.replace(":", "-"), settings=settings
                )
            )
    return tuple(stack)


def enhanced_broker(config: RedpandaSettings, *, service: str, **stack_options: Any) -> KafkaBroker:
    """A `KafkaBroker` with the enhanced stack whose subscribers default to `AckPolicy.MANUAL`."""
    return make_broker(
        config,
        middlewares=enhanced_stack(service=service, **stack_options),
        ack_policy=AckPolicy.MANUAL,
    )


def verify_enhanced_broker(broker: KafkaBroker) -> None:
    """Raise `ConfigError` naming every subscriber whose ack policy is not `AckPolicy.MANUAL`."""
    problems = [problem for sub in broker.subscribers if (problem := wrong_ack_policy(sub)) is not None]
    if problems:
        raise ConfigError("; ".join(problems))


async def close_stack(middlewares: Iterable[Any]) -> None:
    """Release what the stack's middlewares hold (the DLQ producer); call on shutdown."""
    for middleware in middlewares:
        if isinstance(middleware, ErrorRoutingMiddleware):
            await middleware.close()
