"""Consume -> produce on the real Kafka and Redis: outputs acknowledged -> done -> commit.

The enhanced tier as `EnhancedTier` builds it (metrics off, error routing, envelope, dedup,
outputs), a handler returning one child through `@broker.publisher(...)`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage
from faststream.kafka import KafkaBroker

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._ids import child_id
from alpha_streaming._settings import RedpandaSettings
from middlewares._dedup import KEY_PREFIX
from middlewares._envelope import CurrentEnvelope
from middlewares._retry import Budget, RetryPolicy
from middlewares._state import Outcome
from middlewares._tier import EnhancedTier
from tests.support import Spy, end_offset, event, eventually, lag_drains, read_topic, send, shut_down

NewTopic = Callable[..., Awaitable[str]]
SUBSCRIBE: dict[str, Any] = {"auto_offset_reset": "earliest"}  # the tier's broker acks MANUAL
# Quick retries, and enough of them to outlast a topic that is created a few seconds late.
FAST = Budget(max_attempts=30, base_delay_s=0.05, max_delay_s=0.2)


def enhanced(
    bootstrap: str, redis: aioredis.Redis, namespace: str, *before: Any, request_timeout_ms: int = 30_000
) -> tuple[EnhancedTier, KafkaBroker]:
    tier = EnhancedTier(
        "outputs-it",
        redis=redis,
        dedup_namespace=namespace,
        metrics=False,
        policy=RetryPolicy(default=FAST, rules={}, redelivery_delay_s=0.2),
    )
    config = RedpandaSettings(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    return tier, tier.broker(config, outer=before)


class _DoneMarkerAtAck:
    """On every acknowledged publish, reads the dedup key of the event being handled."""

    def __init__(self, redis: aioredis.Redis, key_of: Callable[[str], str]) -> None:
        self.redis, self.key_of = redis, key_of
        self.seen: list[bytes | None] = []

    def __call__(self, msg: Any, /, *, context: Any) -> BaseMiddleware:
        spy = self

        class _Runtime(BaseMiddleware):
            async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
                result = await call_next(cmd)  # returns once Kafka acknowledged the record
                parent = cmd.headers.get("x-causation-id")
                if parent is not None:
                    spy.seen.append(await spy.redis.get(spy.key_of(parent)))
                return result

        return _Runtime(msg, context=context)


async def test_done_marker_is_written_only_after_the_output_is_acknowledged(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    source, out = await new_topic(prefix="paper.fills"), await new_topic(prefix="paper.positions")
    group, namespace = unique("g"), unique("ns")
    key_prefix = f"{KEY_PREFIX}:{{{namespace}:{group}}}:"
    probe = _DoneMarkerAtAck(redis_client, lambda event_id: key_prefix + event_id)
    tier, broker = enhanced(kafka_bootstrap, redis_client, namespace, probe)

    @broker.subscriber(source, group_id=group, **SUBSCRIBE)
    @broker.publisher(out)
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        return {"position": body["n"]}

    fill = event(1)
    await send(kafka_bootstrap, source, (fill, 0))
    await broker.start()
    try:
        [record] = await read_topic(kafka_bootstrap, out, 1)
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, source)
        done = await tier.dedup.marker(group, fill.id) if tier.dedup is not None else None
    finally:
        await shut_down(tier, broker)
    assert len(probe.seen) == 1
    assert probe.seen[0] not in (None, b"done"), "at the output's ack the event still holds its lease"
    assert done == "done"
    assert EventEnvelope.from_bytes(record.value).id == str(child_id(fill.id, out, 0))
    assert lag == 0


async def test_output_to_a_missing_topic_is_retried_until_it_exists_and_appears_once(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    source, out, group = await new_topic(prefix="paper.fills"), unique("paper.positions"), unique("g")
    spy = Spy()
    # The producer waits this long for the missing topic's metadata, then the publish fails.
    tier, broker = enhanced(kafka_bootstrap, redis_client, unique("ns"), spy, request_timeout_ms=1_500)
    runs: list[str] = []

    @broker.subscriber(source, group_id=group, **SUBSCRIBE)
    @broker.publisher(out)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> dict[str, Any]:
        runs.append(envelope.id)
        return {"position": body["n"]}

    fill = event(7)
    await send(kafka_bootstrap, source, (fill, 0))
    await broker.start()
    try:
        # The first run's output was refused (no topic): the message is being retried.
        await eventually(lambda: len(runs) >= 2, "a retry after the failed output")
        await new_topic(name=out)
        await eventually(lambda: len(spy.states) == 1, "the message to finish")
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, source)
        records = await read_topic(kafka_bootstrap, out, 1)
        # Nothing else may follow: read the end offset, not just the first record.
        consumer_end = await end_offset(kafka_bootstrap, out)
    finally:
        await shut_down(tier, broker)
    assert [s.outcome for s in spy.states] == [Outcome.PROCESSED]
    assert spy.states[0].retries >= 1
    assert consumer_end == 1, "the output appears exactly once"
    child = EventEnvelope.from_bytes(records[0].value)
    assert child.id == str(child_id(fill.id, out, 0))
    assert (child.causation_id, child.correlation_id) == (fill.id, fill.correlation_id)
    assert lag == 0


async def test_handler_ack_after_a_side_effect_delivered_twice_has_one_effect(
    kafka_bootstrap: str,
    kafka_admin: AIOKafkaAdminClient,
    redis_client: aioredis.Redis,
    new_topic: NewTopic,
    unique: Callable[[str], str],
) -> None:
    source, group = await new_topic(prefix="paper.fills"), unique("g")
    spy = Spy()
    tier, broker = enhanced(kafka_bootstrap, redis_client, unique("ns"), spy)
    effects: list[str] = []

    @broker.subscriber(source, group_id=group, **SUBSCRIBE)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        effects.append(envelope.id)
        raise AckMessage()

    twice = event(3)
    await send(kafka_bootstrap, source, (twice, 0), (twice, 0))
    await broker.start()
    try:
        await eventually(lambda: len(spy.states) == 2, "both deliveries")
        lag = await lag_drains(kafka_admin, kafka_bootstrap, group, source)
    finally:
        await shut_down(tier, broker)
    assert effects == [twice.id]
    assert [s.outcome for s in spy.states] == [Outcome.PROCESSED, Outcome.DEDUPLICATED]
    assert lag == 0
