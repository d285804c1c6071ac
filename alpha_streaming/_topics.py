"""Topic naming: `{broker}.{domain}.{event}`, shared `market.*`, dead letters at `<topic>.dlq`.

This module is the one place that knows the convention; everything else asks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from alpha_streaming._errors import ConfigError

__all__ = (
    "DLQ_SUFFIX",
    "SHARED_BROKER",
    "BrokerContext",
    "TopicMap",
    "broker_from_topic",
    "dlq_topic",
    "is_dlq_topic",
)

DLQ_SUFFIX = ".dlq"
SHARED_BROKER = "shared"
# Domains whose topics are shared by every broker namespace.
SHARED_DOMAINS = frozenset({"market"})


def broker_from_topic(topic: str) -> str:
    """The broker namespace a topic belongs to.

    `paper.orders.filled` -> `paper`; `market.ticks` -> `shared`; a DLQ twin belongs to the
    namespace of its source topic; a topic without a dot follows no convention -> `shared`.
    """
    if not topic:
        raise ValueError("topic must be a non-empty string")
    head, dot, _ = topic.partition(".")
    if not dot or head in SHARED_DOMAINS:
        return SHARED_BROKER
    return head


def dlq_topic(topic: str) -> str:
    """The dead-letter twin of `topic` (a DLQ topic is its own dead-letter topic)."""
    return topic if is_dlq_topic(topic) else topic + DLQ_SUFFIX


def is_dlq_topic(topic: str) -> bool:
    return topic.endswith(DLQ_SUFFIX)


@dataclass(frozen=True, slots=True)
class BrokerContext:
    """Where a consumed message came from; injectable into handlers."""

    broker: str
    topic: str
    partition: int
    offset: int
    group_id: str | None = None

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, group_id: str | None = None) -> BrokerContext:
        return cls(broker_from_topic(topic), topic, partition, offset, group_id)


@dataclass(frozen=True, slots=True)
class TopicMap:
    """The topic names of one broker namespace, e.g. `TopicMap("paper").signals_raw`."""

    broker: str

    def __post_init__(self) -> None:
        if not self.broker or "." in self.broker:
            raise ConfigError(f"TopicMap broker must be a non-empty name without dots, got {self.broker!r}")
        if self.broker in SHARED_DOMAINS or self.broker == SHARED_BROKER:
            raise ConfigError(
                f"{self.broker!r} is the shared namespace; use TopicMap.market(...) for shared topics"
            )

    def topic(self, domain: str, event: str) -> str:
        return f"{self.broker}.{domain}.{event}"

    @staticmethod
    def market(event: str) -> str:
        return f"market.{event}"

    @property
    def market_ticks(self) -> str:
        return self.market("ticks")

    @property
    def signals_raw(self) -> str:
        return self.topic("signals", "raw")

    @property
    def signals_validated(self) -> str:
        return self.topic("signals", "validated")

    @property
    def signals_rejected(self) -> str:
        return self.topic("signals", "rejected")

    @property
    def orders_filled(self) -> str:
        return self.topic("orders", "filled")

    def all(self) -> tuple[str, ...]:
        """Every topic of the trading pipeline this namespace uses (DLQ twins excluded)."""
        return (
            self.market_ticks,
            self.signals_raw,
            self.signals_validated,
            self.signals_rejected,
            self.orders_filled,
        )
