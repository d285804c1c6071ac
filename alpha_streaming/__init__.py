"""alpha-streaming: Kafka/Redpanda services on FastStream, with a direct and an enhanced tier.

Every public name is here; modules with a leading underscore are internals. The service layer
(builder, built service, orchestrator) loads on first use, because it needs the enhanced tier
(`middlewares`, Redis, the OpenTelemetry SDK), which a direct-tier program never imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from alpha_streaming._admin import (
    TopicResult,
    TopicSpec,
    TopicStatus,
    broker_admin,
    connected_broker,
    ensure_topics,
    topic_partitions,
)
from alpha_streaming._asyncapi import EnvelopeAsyncAPI
from alpha_streaming._broker import make_broker, raw_producer
from alpha_streaming._clients import ConsumedRecord, OutgoingRecord, RedpandaConsumer, RedpandaProducer
from alpha_streaming._dlq import DeadLetter, DlqHeaders
from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import (
    AlphaStreamingError,
    AuthenticationError,
    BusinessError,
    ClientStateError,
    ConfigError,
    EnvelopeError,
    InfrastructureError,
    KafkaClientError,
    OutputPublishError,
    PermanentError,
    PoisonMessageError,
    ProcessingError,
    RateLimitError,
    RedeliveryRequested,
    TransientError,
    UnknownTopicError,
)
from alpha_streaming._ids import CHILD_ID_NAMESPACE, child_id, uuid7
from alpha_streaming._lineage import current_event
from alpha_streaming._logging import configure_logging
from alpha_streaming._settings import (
    ConsumerSettings,
    DedupSettings,
    LogSettings,
    MetricsSettings,
    RedpandaSettings,
    RetrySettings,
    Settings,
)
from alpha_streaming._tools.dlq_filters import parse_filters
from alpha_streaming._tools.dlq_reader import DlqEntry, inspect_dlq
from alpha_streaming._tools.dlq_replay import ReplayReport, replay_dlq
from alpha_streaming._tools.log_reader import StoredRecord, read_bounded
from alpha_streaming._tools.topic_selection import bootstrap_specs
from alpha_streaming._topics import BrokerContext, TopicMap, broker_from_topic, dlq_topic, is_dlq_topic

if TYPE_CHECKING:
    from alpha_streaming._services.builder import StreamServiceBuilder
    from alpha_streaming._services.health import ServiceHealth
    from alpha_streaming._services.orchestrator import ServiceOrchestrator
    from alpha_streaming._services.redis_client import redis_client
    from alpha_streaming._services.service import CurrentProducer, ServiceProducer, StreamService

_SERVICE_LAYER = {
    "CurrentProducer": "alpha_streaming._services.service",
    "ServiceHealth": "alpha_streaming._services.health",
    "ServiceOrchestrator": "alpha_streaming._services.orchestrator",
    "ServiceProducer": "alpha_streaming._services.service",
    "StreamService": "alpha_streaming._services.service",
    "StreamServiceBuilder": "alpha_streaming._services.builder",
    "redis_client": "alpha_streaming._services.redis_client",
}


def __getattr__(name: str) -> Any:
    module = _SERVICE_LAYER.get(name)
    if module is None:
        raise AttributeError(f"module 'alpha_streaming' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = (
    "CHILD_ID_NAMESPACE",
    "AlphaStreamingError",
    "AuthenticationError",
    "BrokerContext",
    "BusinessError",
    "ClientStateError",
    "ConfigError",
    "ConsumedRecord",
    "ConsumerSettings",
    "CurrentProducer",
    "DeadLetter",
    "DedupSettings",
    "DlqEntry",
    "DlqHeaders",
    "EnvelopeAsyncAPI",
    "EnvelopeError",
    "EnvelopeHeaders",
    "EventEnvelope",
    "InfrastructureError",
    "KafkaClientError",
    "LogSettings",
    "MetricsSettings",
    "OutgoingRecord",
    "OutputPublishError",
    "PermanentError",
    "PoisonMessageError",
    "ProcessingError",
    "RateLimitError",
    "RedeliveryRequested",
    "RedpandaConsumer",
    "RedpandaProducer",
    "RedpandaSettings",
    "ReplayReport",
    "RetrySettings",
    "ServiceHealth",
    "ServiceOrchestrator",
    "ServiceProducer",
    "Settings",
    "StoredRecord",
    "StreamService",
    "StreamServiceBuilder",
    "TopicMap",
    "TopicResult",
    "TopicSpec",
    "TopicStatus",
    "TransientError",
    "UnknownTopicError",
    "bootstrap_specs",
    "broker_admin",
    "broker_from_topic",
    "child_id",
    "configure_logging",
    "connected_broker",
    "current_event",
    "dlq_topic",
    "ensure_topics",
    "inspect_dlq",
    "is_dlq_topic",
    "make_broker",
    "parse_filters",
    "raw_producer",
    "read_bounded",
    "redis_client",
    "replay_dlq",
    "topic_partitions",
    "uuid7",
)
