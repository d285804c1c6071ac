"""`ErrorRoutingMiddleware` under TestKafkaBroker: retries, DLQ hand-off, commits, seeks.

The in-memory broker cannot commit or write a DLQ, so the subscriber's consumer is replaced by a
mock (faststream-0.7.md §6) and the DLQ by `RecordingSink`; the real broker path is proven in
tests/integration/middlewares/test_error_routing_real.py. The ack-policy check at startup is in
test_tier.py.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from unittest.mock import AsyncMock, MagicMock, call

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from faststream import AckPolicy, BaseMiddleware
from faststream.exceptions import AckMessage
from faststream.kafka import KafkaBroker, TestKafkaBroker
from pydantic import BaseModel

from alpha_streaming._dlq import DeadLetter, DlqHeaders
from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import (
    EnvelopeError,
    InfrastructureError,
    PermanentError,
    RedeliveryRequested,
    TransientError,
)
from middlewares._committer import CommitWindow, first_offsets
from middlewares._dead_letter import _fit
from middlewares._dlq_topics import DlqTopic as _DlqTopic
from middlewares._envelope import EnvelopeMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._retry import Budget, RetryPolicy
from middlewares._state import Outcome, state_of
from tests.support import RecordingSink, Sleeps, Spy, mock_consumer

SERVICE = "risk-manager"
TOPIC = "paper.orders.filled"
OUT = "paper.orders.audit"


@pytest.fixture
def policy(sleeps: Sleeps) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(1), sleep=sleeps, redelivery_delay_s=0.25)


def _broker(policy: RetryPolicy, sink: RecordingSink, spy: Spy, *inner: Any) -> KafkaBroker:
    """Error routing outermost, `spy` innermost: it sees every run of the inner chain."""
    routing = ErrorRoutingMiddleware(policy=policy, service=SERVICE, dead_letter=sink)
    return KafkaBroker(middlewares=(routing, *inner, spy), ack_policy=AckPolicy.MANUAL)


async def test_success_commits_the_explicit_next_offset(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    seen: list[dict[str, Any]] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        seen.append(body)

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish({"qty": 1}, TOPIC, partition=2)

    assert seen == [{"qty": 1}]
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 2): 1})
    consumer.seek.assert_not_called()
    assert spy.states[-1].outcome is Outcome.PROCESSED
    assert (spy.states[-1].attempts, spy.states[-1].retries) == (1, 0)
    assert sink.writes == []


async def test_transient_error_succeeds_on_attempt_3_without_dlq(
    policy: RetryPolicy, sink: RecordingSink, sleeps: Sleeps, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise InfrastructureError("db down")

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish({"qty": 1}, TOPIC)

    assert len(calls) == 3
    assert len(spy.started) == 3, "each retry re-runs the inner chain"
    state = spy.states[-1]
    assert (state.outcome, state.attempts, state.retries) == (Outcome.PROCESSED, 3, 2)
    assert isinstance(state.error, InfrastructureError)
    assert sink.writes == []
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 0): 1})
    # Two backoffs, each within its exponential ceiling (infrastructure: 2 s, then 4 s).
    assert len(sleeps.delays) == 2
    assert 1.0 <= sleeps.delays[0] <= 2.0
    assert 2.0 <= sleeps.delays[1] <= 4.0


async def test_permanent_error_goes_to_the_dlq_at_once_and_is_committed(
    policy: RetryPolicy, sink: RecordingSink, sleeps: Sleeps, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    publisher = broker.publisher(OUT)

    @publisher
    @broker.subscriber(TOPIC, group_id="risk")
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        raise PermanentError("unknown instrument")

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish(b'{"qty": 1}', TOPIC, key=b"k1", headers={"x-custom": "v"})
        assert publisher.mock is not None
        publisher.mock.assert_not_called()  # no empty body published for a dead-lettered message

    assert len(sink.writes) == 1
    records, error, attempts, group = sink.writes[0]
    assert [(r.topic, r.key, r.value) for r in records] == [(TOPIC, b"k1", b'{"qty": 1}')]
    assert isinstance(error, PermanentError)
    assert (attempts, group) == (1, "risk")
    assert sleeps.delays == []
    assert spy.states[-1].outcome is Outcome.DEAD_LETTERED
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 0): 1})
    consumer.seek.assert_not_called()


async def test_exhausted_transient_budget_is_dead_lettered_after_max_attempts(
    sink: RecordingSink, sleeps: Sleeps, spy: Spy
) -> None:
    quick = Budget(max_attempts=4, base_delay_s=0.01, max_delay_s=0.02)
    policy = RetryPolicy(default=quick, rng=random.Random(3), sleep=sleeps)
    broker = _broker(policy, sink, spy)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)
        raise RuntimeError("always")

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish({"qty": 1}, TOPIC)

    assert len(calls) == 4
    assert len(sleeps.delays) == 3
    assert all(delay <= 0.02 for delay in sleeps.delays)
    assert [w[2] for w in sink.writes] == [4]
    state = spy.states[-1]
    assert (state.outcome, state.attempts, state.retries) == (Outcome.DEAD_LETTERED, 4, 3)
    consumer.commit.assert_awaited_once()


async def test_dlq_write_failure_redelivers_without_commit(
    policy: RetryPolicy, sink: RecordingSink, sleeps: Sleeps, spy: Spy
) -> None:
    sink.fail_with = OSError("broker refused")
    broker = _broker(policy, sink, spy)

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        raise EnvelopeError("not an envelope")

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish({"qty": 1}, TOPIC, partition=1)

    assert spy.states[-1].outcome is Outcome.REDELIVER
    consumer.commit.assert_not_called()
    consumer.seek.assert_called_once_with(TopicPartition(TOPIC, 1), 0)
    assert sleeps.delays == [0.25], "a backoff before the seek: no hot loop"


async def test_redelivery_request_is_never_retried_nor_dead_lettered(
    policy: RetryPolicy, sink: RecordingSink, sleeps: Sleeps, spy: Spy
) -> None:
    raised = RedeliveryRequested("redis down")
    broker = _broker(policy, sink, spy)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> None:
        calls.append(1)
        raise raised

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish({"qty": 1}, TOPIC)

    assert len(calls) == 1
    assert sink.writes == []
    assert spy.states[-1].outcome is Outcome.REDELIVER
    consumer.commit.assert_not_called()
    consumer.seek.assert_called_once_with(TopicPartition(TOPIC, 0), 0)
    assert sleeps.delays == [0.25]


class _Duplicate(BaseMiddleware):
    """Stands in for dedup finding a done marker."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        state_of(msg).outcome = Outcome.DEDUPLICATED
        raise AckMessage()


async def test_duplicate_is_committed_without_handler_or_publish(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy, _Duplicate)
    publisher = broker.publisher(OUT)
    calls: list[int] = []

    @publisher
    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return body

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish({"qty": 1}, TOPIC)  # AckMessage does not escape
        assert publisher.mock is not None
        publisher.mock.assert_not_called()

    assert calls == []
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 0): 1})


async def test_result_is_published_before_the_commit(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    order: list[str] = []
    publisher = broker.publisher(OUT)

    @broker.subscriber(OUT, group_id="audit")
    async def audit(body: dict[str, Any]) -> None:
        order.append("published")

    @publisher
    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return {"seen": body["qty"]}

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        mock_consumer(broker, OUT)
        consumer.commit.side_effect = lambda offsets: order.append("committed")
        await broker.publish({"qty": 1}, TOPIC)

    assert order == ["published", "committed"]


class _FailingResultPublish(BaseMiddleware):
    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        if cmd.destination == OUT:
            raise OSError("producer down")
        return await call_next(cmd)


async def test_failed_result_publish_is_not_committed(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy, _FailingResultPublish)
    publisher = broker.publisher(OUT)

    @publisher
    @broker.subscriber(TOPIC, group_id="g")
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return body

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        with pytest.raises(OSError, match="producer down"):
            await broker.publish({"qty": 1}, TOPIC)

    consumer.commit.assert_not_called()
    consumer.seek.assert_called_once_with(TopicPartition(TOPIC, 0), 0)


class Fill(BaseModel):
    qty: int


async def test_envelope_and_payload_errors_are_dead_lettered_through_the_stack(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy, EnvelopeMiddleware(source=SERVICE))
    handled: list[Fill] = []

    @broker.subscriber(TOPIC, group_id="g")
    async def handle(fill: Fill) -> None:
        handled.append(fill)

    good = EventEnvelope.create(type="Fill", data={"qty": 3}, source="t", key="k", broker="paper")
    bad_payload = EventEnvelope.create(type="Fill", data={"qty": "many"}, source="t", key="k", broker="paper")
    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        for body in (b"\xff\x00 not json", b'{"valid": "json"}', bad_payload.to_bytes(), good.to_bytes()):
            # Bytes with an event id header are sent as they are (the envelope middleware's
            # publish side does not wrap them), so malformed bodies reach the consumer.
            await broker.publish(body, TOPIC, headers={EnvelopeHeaders.ID: "raw"})

    assert handled == [Fill(qty=3)]
    assert [type(w[1]).__name__ for w in sink.writes] == ["EnvelopeError", "EnvelopeError", "ValidationError"]
    assert all(w[2] == 1 for w in sink.writes), "permanent errors are not retried"
    assert [w[0][0].value for w in sink.writes] == [
        b"\xff\x00 not json",
        b'{"valid": "json"}',
        bad_payload.to_bytes(),
    ]
    # The in-memory broker gives every record offset 0: the first outcome commits 1, and the
    # others finish below what is committed already, so they add no commit.
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 0): 1})


async def test_batch_is_retried_as_a_unit_then_every_record_dead_lettered(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    calls: list[int] = []

    @broker.subscriber(TOPIC, group_id="g", batch=True)
    async def handle(bodies: list[dict[str, Any]]) -> None:
        calls.append(len(bodies))
        raise TransientError("still down")

    async with TestKafkaBroker(broker):
        consumer = mock_consumer(broker, TOPIC)
        await broker.publish_batch(b'{"n": 1}', b'{"n": 2}', b'{"n": 3}', topic=TOPIC)

    assert calls == [3] * 5  # the default transient budget, the whole batch each time
    records, _, attempts, _ = sink.writes[0]
    assert [r.value for r in records] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert attempts == 5
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 0): 1})


def _record(topic: str, partition: int, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, partition, offset, 0, 0, None, b"v", None, 0, 1, [])


async def test_batch_offsets_per_partition() -> None:
    records = [
        _record("a", 0, 5),
        _record("a", 1, 9),
        _record("a", 0, 7),
        _record("a", 1, 8),
        _record("b", 0, 1),
    ]
    consumer = MagicMock(commit=AsyncMock())
    window = CommitWindow(consumer, every=1, interval_s=60.0)
    assert window.finish(window.begin(records))
    await window.flush()
    consumer.commit.assert_awaited_once_with(
        {TopicPartition("a", 0): 8, TopicPartition("a", 1): 10, TopicPartition("b", 0): 2}
    )
    assert first_offsets(records) == {
        TopicPartition("a", 0): 5,
        TopicPartition("a", 1): 8,
        TopicPartition("b", 0): 1,
    }


async def test_close_releases_the_dead_letter_sink(policy: RetryPolicy, sink: RecordingSink) -> None:
    await ErrorRoutingMiddleware(policy=policy, service=SERVICE, dead_letter=sink).close()
    assert sink.closed


def test_dlq_headers_are_clipped_to_fit_but_original_bytes_never() -> None:
    value = b"x" * 5_000
    record = ConsumerRecord(TOPIC, 0, 1, 0, 0, b"key", value, None, 0, 5_000, [("orig", b"h")])
    letter = DeadLetter(
        original_topic=TOPIC,
        original_partition=0,
        original_offset=1,
        original_timestamp_ms=0,
        consumer_group="g",
        exception_fqcn="m.E",
        exception_message="m" * 3_000,
        stacktrace="s" * 10_000,
        attempts=1,
        service=SERVICE,
        failed_at=__import__("datetime").datetime.now(__import__("datetime").UTC),
    )
    headers = [("orig", b"h"), *letter.headers()]
    fitted = dict(_fit(record, headers, _DlqTopic(partitions=1, max_message_bytes=7_000)))
    assert len(fitted[DlqHeaders.EXCEPTION_STACKTRACE]) < 10_000
    assert fitted["orig"] == b"h"
    assert DeadLetter.from_headers(list(fitted.items())).original_offset == 1
    roomy = dict(_fit(record, headers, _DlqTopic(partitions=1, max_message_bytes=100_000)))
    assert len(roomy[DlqHeaders.EXCEPTION_STACKTRACE]) == 10_000


async def test_binary_header_values_do_not_stop_a_valid_event(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    seen: list[dict[str, Any]] = []
    subscriber = broker.subscriber(TOPIC, group_id="g")

    @subscriber
    async def handle(body: dict[str, Any]) -> None:
        seen.append(body)

    record = _record(TOPIC, 0, 3)
    record.value = b'{"qty": 2}'
    record.headers = [("trace-bin", b"\x80\xff"), ("ok", b"v")]
    async with TestKafkaBroker(broker):
        await subscriber.process_message(record)

    assert seen == [{"qty": 2}]
    assert sink.writes == []


async def test_binary_header_values_reach_the_dlq_untouched(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)
    subscriber = broker.subscriber(TOPIC, group_id="g")

    @subscriber
    async def handle(body: dict[str, Any]) -> None:
        raise PermanentError("no")

    record = _record(TOPIC, 0, 3)
    record.headers = [("trace-bin", b"\x80\xff")]
    async with TestKafkaBroker(broker):
        await subscriber.process_message(record)

    [(records, _, _, _)] = sink.writes
    assert records[0].headers == [("trace-bin", b"\x80\xff")]


async def test_record_the_parser_rejects_is_dead_lettered_and_committed(
    policy: RetryPolicy, sink: RecordingSink, spy: Spy
) -> None:
    broker = _broker(policy, sink, spy)

    async def refuse(record: Any, original: Any) -> Any:
        raise ValueError("cannot parse")

    subscriber = broker.subscriber(TOPIC, group_id="g", parser=refuse)
    calls: list[int] = []

    @subscriber
    async def handle(body: Any) -> None:
        calls.append(1)

    record = _record(TOPIC, 4, 12)
    async with TestKafkaBroker(broker):
        consumer = MagicMock(commit=AsyncMock(), seek=MagicMock())
        record.consumer = consumer  # type: ignore[attr-defined]  # as aiokafka records of a real subscriber
        await subscriber.process_message(record)  # nothing escapes

    assert calls == []
    [(records, error, attempts, _)] = sink.writes
    assert (records[0].offset, type(error), attempts) == (12, ValueError, 1)
    consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 4): 13})


async def test_commit_window_coalesces_by_count_time_and_flushes_before_a_seek() -> None:
    consumer = MagicMock(commit=AsyncMock())
    window = CommitWindow(consumer, every=3, interval_s=60.0)
    assert not window.finish(window.begin([_record("a", 0, 5)]))
    assert not window.finish(window.begin([_record("a", 1, 2), _record("a", 0, 6)]))
    assert window.finish(window.begin([_record("a", 0, 7)])), "the third outcome makes a commit due"
    window.flush_soon()
    await _commits(consumer, 1)
    consumer.commit.assert_awaited_once_with({TopicPartition("a", 0): 8, TopicPartition("a", 1): 3})
    await window.flush()  # nothing new: no empty commit
    assert consumer.commit.await_count == 1

    timed = CommitWindow(consumer, every=100, interval_s=0.02)
    timed.finish(timed.begin([_record("a", 0, 9)]))
    await _commits(consumer, 2)
    assert consumer.commit.await_args_list[-1] == call({TopicPartition("a", 0): 10})


async def _commits(consumer: MagicMock, count: int) -> None:
    for _ in range(200):  # polled, generous deadline (~2 s)
        if consumer.commit.await_count >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{consumer.commit.await_count} commit(s), expected {count}")


async def test_coalesced_commits_are_flushed_before_a_redelivery_seek(
    sink: RecordingSink, sleeps: Sleeps
) -> None:
    policy = RetryPolicy(sleep=sleeps, redelivery_delay_s=0.0)
    routing = ErrorRoutingMiddleware(policy=policy, service=SERVICE, dead_letter=sink, commit_every=10)
    broker = KafkaBroker(middlewares=(routing,), ack_policy=AckPolicy.MANUAL)
    subscriber = broker.subscriber(TOPIC, group_id="g")
    order: list[str] = []

    @subscriber
    async def handle(body: dict[str, Any]) -> None:
        if body.get("later"):
            raise RedeliveryRequested("redis down")

    consumer = MagicMock()
    consumer.commit = AsyncMock(side_effect=lambda offsets: order.append(f"commit {offsets}"))
    consumer.seek = MagicMock(side_effect=lambda tp, offset: order.append(f"seek {tp.partition}@{offset}"))
    async with TestKafkaBroker(broker):
        for offset, body in ((1, b"{}"), (2, b"{}"), (3, b'{"later": 1}')):
            record = _record(TOPIC, 0, offset)
            record.value = body
            record.consumer = consumer  # type: ignore[attr-defined]
            await subscriber.process_message(record)
        assert order == [f"commit {{{TopicPartition(TOPIC, 0)!r}: 3}}", "seek 0@3"]
        await routing.close()
    assert len(order) == 2, "nothing left pending after the flush"


async def test_a_dead_lettered_outcome_is_committed_at_once_with_what_was_pending(
    sink: RecordingSink, sleeps: Sleeps
) -> None:
    policy = RetryPolicy(sleep=sleeps)
    routing = ErrorRoutingMiddleware(policy=policy, service=SERVICE, dead_letter=sink, commit_every=10)
    broker = KafkaBroker(middlewares=(routing,), ack_policy=AckPolicy.MANUAL)
    subscriber = broker.subscriber(TOPIC, group_id="g")

    @subscriber
    async def handle(body: dict[str, Any]) -> None:
        if body.get("bad"):
            raise PermanentError("unknown instrument")

    consumer = MagicMock(commit=AsyncMock())
    async with TestKafkaBroker(broker):
        for offset, body in ((1, b"{}"), (2, b'{"bad": 1}')):
            record = _record(TOPIC, 0, offset)
            record.value = body
            record.consumer = consumer  # type: ignore[attr-defined]
            await subscriber.process_message(record)
            if offset == 1:
                consumer.commit.assert_not_called()  # held in the window
        consumer.commit.assert_awaited_once_with({TopicPartition(TOPIC, 0): 3})
        assert len(sink.writes) == 1
