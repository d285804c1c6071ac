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
4. `DeduplicationMiddleware` (only with Redis): it claims just before the handler runs and
   marks done once the handler and its outputs succeeded.
5. `OutputsMiddleware`, innermost: publishes the handler's return value and waits for Kafka's
   acknowledgement before dedup's done marker and error routing's commit (FastStream itself
   would publish it only after both).

Enhanced subscribers must run with `AckPolicy.MANUAL` (error routing commits). `enhanced_broker`
builds a broker that has it as the default; `verify_enhanced_broker` rejects any subscriber
that does not (call it before starting; the builder and the orchestrator do).

Commits are coalesced by default when dedup is in the stack (`commit_every="auto"`: 100 outcomes
or `commit_interval_s`, whichever comes first; one commit per message without dedup). Give each
subscriber `listener=revoke_listener(broker)` so a rebalance commits what was processed before
the partitions move, and call `drain_stack` before stopping the broker (once stopped, a consumer
has left its group and its commit is refused while other members remain); the builder does
both. Without them the records whose commit was pending are read again (by the partition's new
owner, or after a restart) and dedup skips them: correct, but a Redis round trip each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream.middlewares import AckPolicy

from alpha_streaming.broker import make_broker
from alpha_streaming.errors import ConfigError
from alpha_streaming.settings import DedupSettings, resolve_commit_every
from middlewares.dedup import DeduplicationMiddleware
from middlewares.envelope import EnvelopeMiddleware
from middlewares.error_routing import ErrorRoutingMiddleware, wrong_ack_policy
from middlewares.metrics import MetricsMiddleware
from middlewares.outputs import OutputsMiddleware
from middlewares.retry import RetryPolicy

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from redis.asyncio import Redis

    from alpha_streaming.settings import RedpandaSettings

__all__ = (
    "RevokeListener",
    "close_stack",
    "drain_stack",
    "enhanced_broker",
    "enhanced_stack",
    "revoke_listener",
    "verify_enhanced_broker",
)


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
    commit_every: int | Literal["auto"] = "auto",
    commit_interval_s: float = 0.5,
) -> tuple[Any, ...]:
    """The enhanced middlewares for `KafkaBroker(middlewares=...)` / `KafkaRouter(middlewares=...)`.

    Dedup is included only when `redis` is given (keys namespaced by `dedup_namespace`, default
    the service name); metrics only when `metrics` is true. `commit_every` > 1 coalesces offset
    commits (see `ErrorRoutingMiddleware`); it is refused without dedup, which makes it safe.
    "auto" coalesces with dedup and commits every message without it.
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
    settings = dedup or DedupSettings()
    deduplicating = redis is not None and settings.enabled
    if commit_every != "auto" and commit_every > 1 and not deduplicating:
        raise ConfigError(
            f"commit_every={commit_every} coalesces commits, which is only safe with dedup (a record "
            "whose commit was pending would run again after a crash); pass `redis=` or commit_every=1"
        )
    stack.append(
        ErrorRoutingMiddleware(
            policy=policy or RetryPolicy(),
            service=service,
            commit_every=resolve_commit_every(commit_every, dedup=deduplicating),
            commit_interval_s=commit_interval_s,
        )
    )
    stack.append(EnvelopeMiddleware(source=service))
    if redis is not None and deduplicating:
        stack.append(
            DeduplicationMiddleware.from_settings(
                redis, namespace=dedup_namespace or service.replace(":", "-"), settings=settings
            )
        )
    stack.append(OutputsMiddleware())
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


async def drain_stack(middlewares: Iterable[Any]) -> None:
    """Commit coalesced offsets while the consumers still run; call before the broker stops.

    E.g. `app.on_shutdown(lambda: drain_stack(broker.middlewares))` (the builder does this);
    from then on every outcome is committed at once, until `close_stack`.
    """
    for middleware in middlewares:
        if isinstance(middleware, ErrorRoutingMiddleware):
            await middleware.drain()


async def close_stack(middlewares: Iterable[Any]) -> None:
    """Release what the stack's middlewares hold (the DLQ producer); call after the broker stopped."""
    for middleware in middlewares:
        if isinstance(middleware, ErrorRoutingMiddleware):
            await middleware.close()


class RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits the coalesced offsets of the partitions a rebalance takes from a consumer.

    aiokafka awaits `on_partitions_revoked` before the group reassigns anything, and still accepts
    this member's commits there: the documented place to commit "manual" offsets. A handler still
    in flight is not waited for: its commit fails afterwards (logged), the partition's new owner
    reads the record again, and dedup waits on its lease or skips it as done.
    """

    def __init__(self, middlewares: Any) -> None:
        self._source = middlewares

    def _routings(self) -> list[ErrorRoutingMiddleware]:
        # Read when a rebalance happens, so middlewares added to the broker later count too.
        found = getattr(self._source, "middlewares", self._source)
        return [m for m in found if isinstance(m, ErrorRoutingMiddleware)]

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            for routing in self._routings():
                await routing.flush_partitions(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


def revoke_listener(middlewares: KafkaBroker | Iterable[Any]) -> RevokeListener:
    """A listener for `broker.subscriber(..., listener=revoke_listener(broker))`.

    Pass the broker (or a router, or the tuple from `enhanced_stack`) whose error routing commits
    for that subscriber; one listener may serve any number of subscribers.
    """
    return RevokeListener(middlewares)
