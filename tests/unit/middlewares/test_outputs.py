"""Consume -> produce order under TestKafkaBroker: outputs acknowledged -> done -> commit.

`_Done` stands where dedup stands in the stack and records what dedup does at that point (mark
done on a return or `AckMessage`, release on anything else); the real dedup and Kafka are proven
in tests/integration/middlewares/test_outputs_real.py. Also: what a handler's `AckMessage`,
`NackMessage` and `RejectMessage` mean together with dedup and error routing.
"""

from __future__ import annotations

import random
from typing import Any
from unittest.mock import MagicMock

import pytest
from faststream import AckPolicy, BaseMiddleware
from faststream.exceptions import AckMessage, NackMessage, RejectMessage
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker

from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import OutputPublishError
from alpha_streaming._ids import child_id
from middlewares._envelope import EnvelopeMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._outputs import OutputsMiddleware
from middlewares._retry import RetryPolicy
from middlewares._state import Outcome, state_of
from tests.support import RecordingSink, Sleeps, mock_consumer

SERVICE = "position-keeper"
TOPIC = "paper.orders.filled"
OUT = "paper.positions.updated"
AUDIT = "paper.positions.audit"


class _Journal:
    """What happened, in order, across the stand-in dedup, the output topics and the commit."""

    entries: list[str]
    failing_publishes = 0
    output_ids: list[str]


class _Done(BaseMiddleware):
    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        if msg.raw_message.topic != TOPIC:
            return await call_next(msg)
        try:
            result = await call_next(msg)
        except AckMessage:
            _Journal.entries.append("done")
            raise
        except BaseException:
            _Journal.entries.append("released")
            raise
        _Journal.entries.append("done")
        return result


class _FlakyOutput(BaseMiddleware):
    """Innermost publish step: sees the wrapped envelope; fails the first `failing_publishes`."""

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        if cmd.destination == OUT:
            _Journal.output_ids.append(cmd.headers[EnvelopeHeaders.ID])
            if _Journal.failing_publishes > 0:
                _Journal.failing_publishes -= 1
                raise OSError("not acknowledged")
        return await call_next(cmd)


@pytest.fixture(autouse=True)
def _journal() -> None:
    _Journal.entries = []
    _Journal.output_ids = []
    _Journal.failing_publishes = 0


@pytest.fixture
def policy() -> RetryPolicy:
    return RetryPolicy(rng=random.Random(1), sleep=Sleeps())


def _broker(policy: RetryPolicy, sink: RecordingSink) -> KafkaBroker:
    stack = (
        ErrorRoutingMiddleware(policy=policy, service=SERVICE, dead_letter=sink),
        EnvelopeMiddleware(source=SERVICE),
        _Done,
        OutputsMiddleware(),
        _FlakyOutput,
    )
    return KafkaBroker(middlewares=stack, ack_policy=AckPolicy.MANUAL)


def _consumer(broker: KafkaBroker) -> MagicMock:
    """Commits of the input subscriber land in the journal."""
    consumer = mock_consumer(broker, TOPIC)
    consumer.commit.side_effect = lambda offsets: _Journal.entries.append("committed")
    return consumer


def _fill() -> bytes:
    return EventEnvelope.create(type="OrderFilled", data={"qty": 2}, source="engine").to_bytes()


def _listen(broker: KafkaBroker, *topics: str) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    for topic in topics:
        _reader(broker, topic, seen)
    return seen


def _reader(broker: KafkaBroker, topic: str, seen: list[tuple[str, dict[str, Any]]]) -> None:
    @broker.subscriber(topic, group_id=f"reader-{topic}")
    async def read(body: dict[str, Any]) -> None:
        seen.append((topic, body))
        _Journal.entries.append(f"published {topic}")


async def _deliver(broker: KafkaBroker, raw: bytes) -> None:
    await broker.publish(raw, TOPIC, headers={EnvelopeHeaders.ID: "wire"})


async def test_returned_event_is_acknowledged_before_done_and_commit(
    policy: RetryPolicy, sink: RecordingSink
) -> None:
    broker = _broker(policy, sink)
    seen = _listen(broker, OUT)

    @broker.subscriber(TOPIC, group_id="g")
    @broker.publisher(OUT)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        _Journal.entries.append("handler")
        return {"position": body["qty"]}

    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, _fill())

    assert _Journal.entries == ["handler", f"published {OUT}", "done", "committed"]
    assert [body for _, body in seen] == [{"position": 2}], "published once, not again by FastStream"


async def test_every_publisher_gets_the_result_once_before_done(
    policy: RetryPolicy, sink: RecordingSink
) -> None:
    broker = _broker(policy, sink)
    seen = _listen(broker, OUT, AUDIT)

    @broker.subscriber(TOPIC, group_id="g")
    @broker.publisher(OUT)
    @broker.publisher(AUDIT)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return {"position": body["qty"]}

    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, _fill())

    assert sorted(topic for topic, _ in seen) == [AUDIT, OUT]
    assert _Journal.entries[-2:] == ["done", "committed"]


async def test_failed_output_is_retried_with_the_same_child_id(
    policy: RetryPolicy, sink: RecordingSink
) -> None:
    broker = _broker(policy, sink)
    seen = _listen(broker, OUT)
    runs: list[int] = []

    @broker.subscriber(TOPIC, group_id="g")
    @broker.publisher(OUT)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        runs.append(1)
        return {"position": body["qty"]}

    fill = _fill()
    _Journal.failing_publishes = 2
    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, fill)

    parent = EventEnvelope.from_bytes(fill).id
    assert len(runs) == 3, "a failed output is a transient failure of the message: retried"
    assert _Journal.output_ids == [str(child_id(parent, OUT, 0))] * 3, "every re-run emits the same id"
    assert _Journal.entries == ["released", "released", f"published {OUT}", "done", "committed"]
    assert len(seen) == 1
    assert sink.writes == []


async def test_an_output_that_never_succeeds_is_dead_lettered_not_done(
    policy: RetryPolicy, sink: RecordingSink
) -> None:
    broker = _broker(policy, sink)

    @broker.subscriber(TOPIC, group_id="g")
    @broker.publisher(OUT)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return {"position": body["qty"]}

    _Journal.failing_publishes = 1_000
    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, _fill())

    attempts = policy.default.max_attempts
    assert [type(error) for _, error, _, _ in sink.writes] == [OutputPublishError]
    assert sink.writes[0][2] == attempts
    assert _Journal.entries == ["released"] * attempts + ["committed"], "never done; committed after the DLQ"


async def test_handler_ack_after_a_side_effect_is_done_and_publishes_nothing(
    policy: RetryPolicy, sink: RecordingSink
) -> None:
    broker = _broker(policy, sink)
    seen = _listen(broker, OUT)
    states: list[Any] = []

    @broker.subscriber(TOPIC, group_id="g")
    @broker.publisher(OUT)
    async def handle(body: dict[str, Any], message: KafkaMessage) -> dict[str, Any]:
        states.append(state_of(message))
        raise AckMessage()

    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, _fill())

    assert _Journal.entries == ["done", "committed"], "AckMessage means done: a redelivery is a duplicate"
    assert seen == []
    assert states[0].outcome is Outcome.PROCESSED


async def test_handler_nack_is_a_transient_failure_retried_then_dead_lettered(
    policy: RetryPolicy, sink: RecordingSink
) -> None:
    broker = _broker(policy, sink)
    runs: list[int] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        runs.append(1)
        raise NackMessage()

    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, _fill())

    attempts = policy.default.max_attempts
    assert len(runs) == attempts, "never a hot loop, never forever"
    assert [type(error) for _, error, _, _ in sink.writes] == [NackMessage]
    assert _Journal.entries == ["released"] * attempts + ["committed"]


async def test_handler_reject_is_dead_lettered_at_once(policy: RetryPolicy, sink: RecordingSink) -> None:
    broker = _broker(policy, sink)
    runs: list[int] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        runs.append(1)
        raise RejectMessage()

    async with TestKafkaBroker(broker):
        _consumer(broker)
        await _deliver(broker, _fill())

    assert runs == [1]
    assert [(type(error), attempts) for _, error, attempts, _ in sink.writes] == [(RejectMessage, 1)]
    assert _Journal.entries == ["released", "committed"], "rejected is not done: a DLQ replay runs it"
