"""alpha-streaming: Kafka/Redpanda services on FastStream, with a direct and an enhanced tier."""

from __future__ import annotations

from alpha_streaming.builder import StreamServiceBuilder
from alpha_streaming.clients import RedpandaConsumer, RedpandaProducer
from alpha_streaming.envelope import EventEnvelope
from alpha_streaming.orchestrator import ServiceOrchestrator
from alpha_streaming.settings import RedpandaSettings, Settings
from alpha_streaming.topics import BrokerContext, TopicMap, broker_from_topic

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
