"""alpha-streaming: Kafka/Redpanda services on FastStream, with a direct and an enhanced tier."""

from __future__ import annotations

import importlib
from typing import Any

from alpha_streaming.envelope import EventEnvelope
from alpha_streaming.settings import RedpandaSettings, Settings
from alpha_streaming.topics import BrokerContext, TopicMap, broker_from_topic

# TEMPORARY while the tiers are built in parallel: names whose modules may not exist yet.
# Replaced by explicit imports once every module has landed.
_LAZY = {
    "RedpandaProducer": "alpha_streaming.clients",
    "RedpandaConsumer": "alpha_streaming.clients",
    "StreamServiceBuilder": "alpha_streaming.builder",
    "ServiceOrchestrator": "alpha_streaming.orchestrator",
}

__all__ = (
    "BrokerContext",
    "EventEnvelope",
    "RedpandaConsumer",
    "RedpandaProducer",
    "RedpandaSettings",
    "ServiceOrchestrator",
    "Settings",
    "StreamServiceBuilder",
    "TopicMap",
    "broker_from_topic",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alpha_streaming' has no attribute {name!r}")
