"""Error routing against the real Kafka: retries, DLQ bytes and headers, commits, redelivery.

The tier without Redis and metrics (error routing, envelope, outputs; a commit per message).
Every fact is read back from the broker with independent clients: DLQ records with a plain
aiokafka consumer, committed offsets with the admin client (group lag = end - committed).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from faststream import FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming._dlq import DeadLetter, strip_dlq_headers
from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._errors import PermanentError, TransientError
from alpha_streaming._settings import RedpandaSettings
from alpha_streaming._topics import dlq_topic
from middlewares._retry import Budget, RetryPolicy
from middlewares._tier import EnhancedTier
from tests.conftest import NewTopicFactory
from tests.support import eventually, group_lag, read_topic

SERVICE = "error-routing-it"
# Tiny waits: the behaviour under test is the routing, not the clock.
TINY = Budget(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
POLICY = RetryPolicy(default=TINY, redelivery_delay_s=0.2).with_rule(TransientError, TINY)


class Fill(BaseModel):
    qty: int


def _envelope(data: dict[str, Any], key: str = "k1") -> EventEnvelope:
    return EventEnvelope.create(type="Fill", data=data, source="upstream", key=key, broker="paper")


@pytest.fixture
async def raw_producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    yield producer
    await producer.stop()


@pytest.fixture
def make_enhanced(kafka_bootstrap: str) -> Callable[[], tuple[FastStream, KafkaBroker]]:
    """An app as a user wires it: `tier.broker()` and `tier.install(FastStream(broker))`."""

    def build() -> tuple[FastStream, KafkaBroker]:
        tier = EnhancedTier(SERVICE, policy=POLICY, metrics=False)
        broker = tier.broker(RedpandaSettings(bootstrap_servers=kafka_bootstrap))
        return tier.install(FastStream(broker)), broker

    return build


async def _lag_drains(admin: AIOKafkaAdminClient, bootstrap: str, group: str, topic: str) -> None:
    """Wait until the group has committed everything on `topic` (commits follow processing)."""

    async def drained() -> bool:
        return await group_lag(admin, bootstrap, group, topic) == 0

    await eventually(drained, f"group {group} to commit everything on {topic}", every_s=0.1)


async def _dlq_absent(admin: AIOKafkaAdminClient, topic: str) -> bool:
    described = await admin.describe_topics([dlq_topic(topic)])
    return all(item.get("error_code") != 0 for item in described)


async def test_transient_error_succeeding_on_attempt_3_is_handled_once_without_dlq(
    make_enhanced: Callable[[], tuple[FastStream, KafkaBroker]],
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    kafka_bootstrap: str,
) -> None:
    topic = await new_topic(prefix="paper.er.transient")
    group = f"er-{uuid.uuid4().hex[:8]}"
    app, broker = make_enhanced()
    attempts: list[int] = []
    done: list[Fill] = []

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(fill: Fill) -> None:
        attempts.append(fill.qty)
        if len(attempts) < 3:
            raise TransientError("upstream flaky")
        done.append(fill)

    await app.start()
    try:
        await broker.publish(Fill(qty=7), topic, key=b"k1")
        await eventually(lambda: len(done) == 1, "the third attempt to succeed")
        await _lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await app.stop()  # drain, stop the broker, close the tier
    assert attempts == [7, 7, 7]
    assert done == [Fill(qty=7)]
    assert await _dlq_absent(kafka_admin, topic), "no DLQ topic, hence no DLQ record"


async def test_permanent_error_is_dead_lettered_with_original_bytes_and_committed(
    make_enhanced: Callable[[], tuple[FastStream, KafkaBroker]],
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    kafka_bootstrap: str,
    raw_producer: AIOKafkaProducer,
) -> None:
    topic = await new_topic(partitions=3, prefix="paper.er.permanent")
    group = f"er-{uuid.uuid4().hex[:8]}"
    app, broker = make_enhanced()
    calls: list[int] = []

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(fill: Fill) -> None:
        calls.append(fill.qty)
        raise PermanentError("instrument unknown")

    original = _envelope({"qty": 5})
    headers = [(k, v.encode()) for k, v in original.headers().items()] + [("x-custom", b"\x00\x01")]
    sent = await raw_producer.send_and_wait(
        topic, original.to_bytes(), key=b"strategy:42", partition=2, headers=headers
    )

    await app.start()
    try:
        await _lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await app.stop()  # drain, stop the broker, close the tier

    assert calls == [5], "a permanent error is not retried"
    [record] = await read_topic(kafka_bootstrap, dlq_topic(topic), 1)
    assert record.value == original.to_bytes()
    assert record.key == b"strategy:42"
    assert record.partition == 2, "the source partition number is kept"
    assert strip_dlq_headers(list(record.headers)) == headers
    letter = DeadLetter.from_headers(list(record.headers))
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        topic,
        2,
        sent.offset,
    )
    assert letter.consumer_group == group
    assert letter.exception_fqcn == "alpha_streaming._errors.PermanentError"
    assert letter.exception_message == "instrument unknown"
    assert "PermanentError" in letter.stacktrace
    assert (letter.attempts, letter.service) == (1, SERVICE)


async def _set_max_message_bytes(admin: AIOKafkaAdminClient, topic: str, value: int) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(value)})
    [response] = await admin.alter_configs([resource])
    assert all(item[0] == 0 for item in response.resources), response


async def test_dlq_write_failure_leaves_the_offset_uncommitted_and_the_message_comes_back(
    make_enhanced: Callable[[], tuple[FastStream, KafkaBroker]],
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    kafka_bootstrap: str,
    raw_producer: AIOKafkaProducer,
) -> None:
    topic = await new_topic(prefix="paper.er.dlqfail")
    # The DLQ exists already and refuses records this large: a real broker-side refusal.
    await new_topic(name=dlq_topic(topic), config={"max.message.bytes": "2000"})
    group = f"er-{uuid.uuid4().hex[:8]}"
    app, broker = make_enhanced()
    seen: list[int] = []

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(fill: Fill) -> None:
        seen.append(fill.qty)
        raise PermanentError("cannot book")

    small = _envelope({"qty": 1})
    big = _envelope({"qty": 9, "note": "n" * 5000})
    await raw_producer.send_and_wait(topic, small.to_bytes(), key=b"k")
    await raw_producer.send_and_wait(topic, big.to_bytes(), key=b"k")

    await app.start()
    try:
        # The small one fits the DLQ and is committed; the big one is refused by the broker:
        # not committed, seek back, processed again (and again).
        await eventually(lambda: seen.count(9) >= 3, "the big message to be redelivered after DLQ failures")
        assert seen.count(1) == 1
        assert await group_lag(kafka_admin, kafka_bootstrap, group, topic) == 1
        committed = await kafka_admin.list_consumer_group_offsets(group)
        assert [meta.offset for meta in committed.values()] == [1], "committed up to the big one, not past"
        # The DLQ accepts it now: the next redelivery is dead-lettered and committed. (The
        # refused batch left a gap in the idempotent producer's sequence for that partition;
        # this passes only because the DLQ writer replaces its producer after a failure.)
        await _set_max_message_bytes(kafka_admin, dlq_topic(topic), 1_000_000)
        await _lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await app.stop()  # drain, stop the broker, close the tier
    records = await read_topic(kafka_bootstrap, dlq_topic(topic), 2)
    assert [r.value for r in records] == [small.to_bytes(), big.to_bytes()]
    assert DeadLetter.from_headers(list(records[1].headers)).exception_message == "cannot book"


async def test_malformed_inputs_are_dead_lettered_and_the_consumer_keeps_going(
    make_enhanced: Callable[[], tuple[FastStream, KafkaBroker]],
    new_topic: NewTopicFactory,
    kafka_admin: AIOKafkaAdminClient,
    kafka_bootstrap: str,
    raw_producer: AIOKafkaProducer,
) -> None:
    limit = 300_000
    topic = await new_topic(prefix="paper.er.malformed", config={"max.message.bytes": str(limit)})
    group = f"er-{uuid.uuid4().hex[:8]}"
    app, broker = make_enhanced()
    handled: list[Fill] = []

    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(fill: Fill) -> None:
        handled.append(fill)

    bad = {
        "malformed bytes": b"\xff\xfe\x00 garbage",
        "wrong json": b'{"id": "x", "type": ',
        "wrong schema": b'{"order": 1, "qty": 2}',
        "payload fails the model": _envelope({"qty": "a lot"}).to_bytes(),
        "huge payload": b"z" * (limit - 1_000),
    }
    for value in bad.values():
        await raw_producer.send_and_wait(topic, value, key=b"k", headers=[("x-origin", b"test")])
    good = _envelope({"qty": 11})
    await raw_producer.send_and_wait(topic, good.to_bytes(), key=b"k")

    await app.start()
    try:
        await eventually(lambda: len(handled) == 1, "the good message after the bad ones")
        await _lag_drains(kafka_admin, kafka_bootstrap, group, topic)
    finally:
        await app.stop()  # drain, stop the broker, close the tier
    assert handled == [Fill(qty=11)]
    records = await read_topic(kafka_bootstrap, dlq_topic(topic), len(bad))
    assert [r.value for r in records] == list(bad.values()), "original bytes, in order, none lost"
    letters = [DeadLetter.from_headers(list(r.headers)) for r in records]
    assert [letter.exception_fqcn.rsplit(".", 1)[1] for letter in letters] == [
        "EnvelopeError",
        "EnvelopeError",
        "EnvelopeError",
        "ValidationError",
        "EnvelopeError",
    ]
    assert all(letter.attempts == 1 for letter in letters)
    assert all(strip_dlq_headers(list(r.headers)) == [("x-origin", b"test")] for r in records)
    # The huge one only fits because the DLQ topic was created with headroom above the source.
    huge = records[-1]
    assert len(huge.value) + sum(len(k) + len(v) for k, v in huge.headers) > limit
