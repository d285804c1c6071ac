"""The one place where aiokafka's errors become `alpha_streaming._errors` types.

Callers of the direct tier never see a raw `aiokafka.errors` exception: every client call that
reaches aiokafka runs inside `kafka_errors(...)`, which re-raises the most specific of our types
with the operation and topic in the message and the original chained as `__cause__`.
"""

from __future__ import annotations

from types import TracebackType

from aiokafka import errors as ak

from alpha_streaming._broker import describe_error
from alpha_streaming._errors import ClientStateError, KafkaClientError, UnknownTopicError

__all__ = ("kafka_errors", "translate")

_NO_TOPIC_HINT = "create it first (topic auto-creation is off on this cluster), or check the name for typos"


def translate(exc: BaseException, operation: str, topic: str | None = None) -> Exception | None:
    """Our error for an aiokafka error raised during `operation`; None if `exc` is not aiokafka's."""
    where = f"{operation} (topic {topic!r})" if topic else operation
    if isinstance(exc, ak.UnknownTopicOrPartitionError):
        return UnknownTopicError(f"{where}: the topic does not exist; {_NO_TOPIC_HINT}")
    if isinstance(exc, ak.ProducerClosed | ak.ConsumerStoppedError):
        return ClientStateError(f"{where}: the client is stopped; start it again or use a new one")
    if isinstance(exc, ak.CommitFailedError | ak.IllegalStateError):
        return KafkaClientError(
            f"{where}: the partition is no longer assigned to this consumer (a rebalance moved it); "
            f"the record will be redelivered to its new owner ({type(exc).__name__}: {exc})"
        )
    if isinstance(exc, ak.KafkaConnectionError):
        return KafkaClientError(
            f"{where}: cannot connect to Kafka: {describe_error(exc)}; check "
            "KAFKA_BOOTSTRAP_SERVERS / ALPHA_REDPANDA_BOOTSTRAP_SERVERS"
        )
    if isinstance(exc, ak.KafkaError | ak.IllegalOperation):
        return KafkaClientError(f"{where}: {describe_error(exc)}")
    return None


class kafka_errors:  # lower case: it reads like a function, `with kafka_errors("send", topic):`
    """Context manager that re-raises aiokafka errors as `alpha_streaming._errors` types."""

    # A class rather than @contextmanager: it sits on the send/commit hot path and costs
    # two plain method calls instead of a generator round trip.
    __slots__ = ("_operation", "_topic")

    def __init__(self, operation: str, topic: str | None = None) -> None:
        self._operation = operation
        self._topic = topic

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        mapped = translate(exc, self._operation, self._topic)
        if mapped is not None:
            raise mapped from exc
