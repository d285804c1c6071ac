"""The dead-letter record format: original key/value/headers untouched, plus error headers.

Header names and encodings follow Spring for Apache Kafka's dead-letter vocabulary, which most
Kafka tools already read: partition is a 4-byte big-endian int, offset and timestamp are 8-byte
big-endian longs, the rest UTF-8. Our own additions use the `x-dlq-` prefix and UTF-8 text.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ("DeadLetter", "DlqHeaders", "KafkaHeaderList", "strip_dlq_headers")

KafkaHeaderList = list[tuple[str, bytes]]


class DlqHeaders:
    ORIGINAL_TOPIC = "kafka_dlt-original-topic"
    ORIGINAL_PARTITION = "kafka_dlt-original-partition"  # 4-byte big-endian int
    ORIGINAL_OFFSET = "kafka_dlt-original-offset"  # 8-byte big-endian long
    ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"  # 8-byte big-endian long, epoch ms
    ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
    ORIGINAL_CONSUMER_GROUP = "kafka_dlt-original-consumer-group"
    EXCEPTION_FQCN = "kafka_dlt-exception-fqcn"
    EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
    EXCEPTION_STACKTRACE = "kafka_dlt-exception-stacktrace"
    ATTEMPTS = "x-dlq-attempts"
    SERVICE = "x-dlq-service"
    FAILED_AT = "x-dlq-failed-at"
    # Set by `alpha-streaming dlq replay` on the record it puts back on the source topic.
    REPLAY_COUNT = "x-dlq-replay-count"

    ALL = frozenset(
        {
            ORIGINAL_TOPIC,
            ORIGINAL_PARTITION,
            ORIGINAL_OFFSET,
            ORIGINAL_TIMESTAMP,
            ORIGINAL_TIMESTAMP_TYPE,
            ORIGINAL_CONSUMER_GROUP,
            EXCEPTION_FQCN,
            EXCEPTION_MESSAGE,
            EXCEPTION_STACKTRACE,
            ATTEMPTS,
            SERVICE,
            FAILED_AT,
        }
    )


# Long error texts would bloat every DLQ record; keep what a human needs.
MAX_MESSAGE_BYTES = 4_096
MAX_STACKTRACE_BYTES = 16_384


def _clip(text: str, limit: int) -> bytes:
    return text.encode("utf-8", "replace")[:limit]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why and where a record failed; encoded as headers next to the original ones."""

    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int
    consumer_group: str | None
    exception_fqcn: str
    exception_message: str
    stacktrace: str
    attempts: int
    service: str
    failed_at: datetime

    def headers(self) -> KafkaHeaderList:
        headers: KafkaHeaderList = [
            (DlqHeaders.ORIGINAL_TOPIC, self.original_topic.encode()),
            (DlqHeaders.ORIGINAL_PARTITION, struct.pack(">i", self.original_partition)),
            (DlqHeaders.ORIGINAL_OFFSET, struct.pack(">q", self.original_offset)),
            (DlqHeaders.ORIGINAL_TIMESTAMP, struct.pack(">q", self.original_timestamp_ms)),
            (DlqHeaders.ORIGINAL_TIMESTAMP_TYPE, b"CreateTime"),
            (DlqHeaders.EXCEPTION_FQCN, self.exception_fqcn.encode()),
            (DlqHeaders.EXCEPTION_MESSAGE, _clip(self.exception_message, MAX_MESSAGE_BYTES)),
            (DlqHeaders.EXCEPTION_STACKTRACE, _clip(self.stacktrace, MAX_STACKTRACE_BYTES)),
            (DlqHeaders.ATTEMPTS, str(self.attempts).encode()),
            (DlqHeaders.SERVICE, self.service.encode()),
            (DlqHeaders.FAILED_AT, self.failed_at.astimezone(UTC).isoformat().encode()),
        ]
        if self.consumer_group is not None:
            headers.append((DlqHeaders.ORIGINAL_CONSUMER_GROUP, self.consumer_group.encode()))
        return headers

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
        """Read the error headers of a DLQ record; raises `ValueError` if it is not one."""
        found = {key: value for key, value in headers if key in DlqHeaders.ALL}
        try:
            group = found.get(DlqHeaders.ORIGINAL_CONSUMER_GROUP)
            return cls(
                original_topic=found[DlqHeaders.ORIGINAL_TOPIC].decode(),
                original_partition=struct.unpack(">i", found[DlqHeaders.ORIGINAL_PARTITION])[0],
                original_offset=struct.unpack(">q", found[DlqHeaders.ORIGINAL_OFFSET])[0],
                original_timestamp_ms=struct.unpack(">q", found[DlqHeaders.ORIGINAL_TIMESTAMP])[0],
                consumer_group=group.decode() if group is not None else None,
                exception_fqcn=found[DlqHeaders.EXCEPTION_FQCN].decode(),
                exception_message=found.get(DlqHeaders.EXCEPTION_MESSAGE, b"").decode("utf-8", "replace"),
                stacktrace=found.get(DlqHeaders.EXCEPTION_STACKTRACE, b"").decode("utf-8", "replace"),
                attempts=int(found.get(DlqHeaders.ATTEMPTS, b"0")),
                service=found.get(DlqHeaders.SERVICE, b"").decode(),
                failed_at=datetime.fromisoformat(found[DlqHeaders.FAILED_AT].decode()),
            )
        except (KeyError, struct.error, ValueError) as exc:
            raise ValueError(f"not a dead-letter record: missing or malformed header ({exc})") from exc


def strip_dlq_headers(headers: Sequence[tuple[str, bytes]]) -> KafkaHeaderList:
    """The original headers of a DLQ record (error headers removed), in their original order."""
    return [(key, value) for key, value in headers if key not in DlqHeaders.ALL]
