"""The direct tier: a thin idempotent producer and a manual-commit consumer over FastStream's broker."""

from __future__ import annotations

from alpha_streaming._clients.consumer import RebalanceListener, RedpandaConsumer
from alpha_streaming._clients.producer import OutgoingRecord, RedpandaProducer
from alpha_streaming._clients.records import ConsumedRecord, RecordBatch

__all__ = (
    "ConsumedRecord",
    "OutgoingRecord",
    "RebalanceListener",
    "RecordBatch",
    "RedpandaConsumer",
    "RedpandaProducer",
)
