"""One function decides the namespace of any topic (seed-lessons #13)."""

from __future__ import annotations

import pytest

from alpha_streaming import BrokerContext, TopicMap, broker_from_topic
from alpha_streaming._errors import ConfigError
from alpha_streaming._topics import dlq_topic, is_dlq_topic


@pytest.mark.parametrize(
    ("topic", "broker"),
    [
        ("paper.orders.filled", "paper"),
        ("zerodha.signals.raw", "zerodha"),
        ("market.ticks", "shared"),
        ("market.ticks.dlq", "shared"),
        ("paper.signals.raw.dlq", "paper"),
        ("orders", "shared"),
    ],
)
def test_broker_from_topic(topic: str, broker: str) -> None:
    assert broker_from_topic(topic) == broker


def test_empty_topic_is_an_error() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        broker_from_topic("")


def test_topic_map_names() -> None:
    paper = TopicMap("paper")
    assert paper.signals_raw == "paper.signals.raw"
    assert paper.signals_validated == "paper.signals.validated"
    assert paper.signals_rejected == "paper.signals.rejected"
    assert paper.orders_filled == "paper.orders.filled"
    assert paper.market_ticks == "market.ticks" == TopicMap("zerodha").market_ticks
    assert paper.topic("positions", "updated") == "paper.positions.updated"
    assert all(broker_from_topic(t) in {"paper", "shared"} for t in paper.all())


@pytest.mark.parametrize("bad", ["", "pa.per", "market", "shared"])
def test_topic_map_rejects_bad_namespaces(bad: str) -> None:
    with pytest.raises(ConfigError):
        TopicMap(bad)


def test_dlq_twins() -> None:
    assert dlq_topic("paper.orders.filled") == "paper.orders.filled.dlq"
    assert dlq_topic("paper.orders.filled.dlq") == "paper.orders.filled.dlq"
    assert is_dlq_topic("x.dlq")
    assert not is_dlq_topic("market.ticks")


def test_broker_context_derives_namespace_from_topic() -> None:
    where = BrokerContext.of("zerodha.orders.filled", 2, 41, "engine")
    assert where == BrokerContext("zerodha", "zerodha.orders.filled", 2, 41, "engine")
    assert BrokerContext.of("market.ticks", 0, 0).broker == "shared"
