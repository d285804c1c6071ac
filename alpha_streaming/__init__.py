"""alpha-streaming: Kafka/Redpanda services on FastStream, with a direct and an enhanced tier."""

from alpha_streaming.envelope import EventEnvelope
from alpha_streaming.settings import RedpandaSettings, Settings
from alpha_streaming.topics import BrokerContext, TopicMap, broker_from_topic

__all__ = (
    "BrokerContext",
    "EventEnvelope",
    "RedpandaSettings",
    "Settings",
    "TopicMap",
    "broker_from_topic",
)
