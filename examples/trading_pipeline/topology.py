"""Who consumes and produces which topic: the one description the services, demo and report share.

    market-feed ──> market.ticks ──> strategy-runner ──> {broker}.signals.raw
    {broker}.signals.raw ──> risk-manager ──> {broker}.signals.validated | .rejected
    {broker}.signals.validated ──> {broker}-engine ──> {broker}.orders.filled

`{broker}` is `paper` or `zerodha`; `market.ticks` is shared by both namespaces. The risk
manager is ONE consumer group over both namespaces' raw signals: each message carries its own
`BrokerContext`, which decides where the verdict goes.
"""

from __future__ import annotations

from dataclasses import dataclass

from alpha_streaming import TopicMap, dlq_topic

__all__ = (
    "NAMESPACES",
    "PARTITIONS",
    "TICKS",
    "Consumer",
    "consumers",
    "dlq_topics",
    "pipeline_topics",
)

NAMESPACES: tuple[str, ...] = ("paper", "zerodha")
TICKS = TopicMap.market("ticks")
PARTITIONS = 3


@dataclass(frozen=True, slots=True)
class Consumer:
    """A service's consumer group and the topics it reads."""

    service: str
    group: str
    topics: tuple[str, ...]


def consumers() -> tuple[Consumer, ...]:
    maps = [TopicMap(ns) for ns in NAMESPACES]
    return (
        Consumer("strategy-runner", "strategy-runner.ticks", (TICKS,)),
        Consumer("risk-manager", "risk-manager.signals", tuple(m.signals_raw for m in maps)),
        *(Consumer(f"{m.broker}-engine", f"{m.broker}-engine.orders", (m.signals_validated,)) for m in maps),
    )


def pipeline_topics() -> tuple[str, ...]:
    """Every topic of the pipeline, DLQ twins excluded."""
    topics = [TICKS]
    for ns in NAMESPACES:
        m = TopicMap(ns)
        topics += [m.signals_raw, m.signals_validated, m.signals_rejected, m.orders_filled]
    return tuple(topics)


def dlq_topics() -> tuple[str, ...]:
    """The dead-letter twins of the topics that are consumed (only those can dead-letter)."""
    return tuple(dlq_topic(topic) for consumer in consumers() for topic in consumer.topics)
