"""aiokafka errors never reach callers: each maps to one of our types, with the cause chained."""

from __future__ import annotations

import pytest
from aiokafka import errors as ak

from alpha_streaming._clients._errors import kafka_errors
from alpha_streaming._errors import ClientStateError, KafkaClientError, UnknownTopicError


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ak.UnknownTopicOrPartitionError(), UnknownTopicError),
        (ak.ProducerClosed(), ClientStateError),
        (ak.ConsumerStoppedError(), ClientStateError),
        (ak.CommitFailedError(), KafkaClientError),
        (ak.IllegalStateError("Partition is not assigned"), KafkaClientError),
        (ak.KafkaConnectionError("refused"), KafkaClientError),
        (ak.KafkaTimeoutError(), KafkaClientError),
        (ak.MessageSizeTooLargeError(), KafkaClientError),
        (ak.IllegalOperation("Requires group_id"), KafkaClientError),
    ],
)
def test_aiokafka_errors_are_translated(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected, match="send \\(topic 'orders'\\)") as info, kafka_errors("send", "orders"):
        raise raised
    assert info.value.__cause__ is raised
    assert not isinstance(info.value, ak.KafkaError)


def test_unknown_topic_message_says_what_to_do() -> None:
    with pytest.raises(UnknownTopicError, match="create it first"), kafka_errors("send", "x"):
        raise ak.UnknownTopicOrPartitionError()


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(ValueError, match="mine"), kafka_errors("send"):
        raise ValueError("mine")
