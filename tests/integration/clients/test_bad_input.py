"""Clear errors for unusable input; undecodable records are delivered, not fatal."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from alpha_streaming import RedpandaConsumer, RedpandaProducer, RedpandaSettings
from alpha_streaming._errors import ClientStateError, UnknownTopicError
from tests.conftest import NewTopicFactory


async def test_sending_to_a_missing_topic_raises_unknown_topic(
    settings: RedpandaSettings, unique: Callable[[str], str]
) -> None:
    # A short request timeout bounds how long aiokafka waits for the topic to appear.
    quick = settings.model_copy(update={"request_timeout_ms": 1500})
    missing = unique("direct.missing")
    async with RedpandaProducer(quick) as producer:
        with pytest.raises(UnknownTopicError, match=missing) as info:
            await producer.send(topic=missing, key="k", value=b"v")
    assert "auto-creation is off" in str(info.value)
    assert info.value.__cause__ is not None  # the aiokafka error is chained, never raised


async def test_consuming_a_missing_topic_fails_at_start(
    settings: RedpandaSettings, unique: Callable[[str], str]
) -> None:
    missing = unique("direct.missing")
    consumer = RedpandaConsumer(settings, topics=[missing], group_id=unique("g"))
    with pytest.raises(UnknownTopicError, match=missing):
        await consumer.start()
    with pytest.raises(ClientStateError):
        await consumer.commit()


async def test_undecodable_records_arrive_as_bytes(
    settings: RedpandaSettings,
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    unique: Callable[[str], str],
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.bad")
    raw = [b'{"broken": ', b"\xff\xfe\x00", b"[1, 2]", b"", b'  {"ok": 1}']
    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await plain.start()
    try:
        for value in raw:
            await plain.send_and_wait(topic, value, headers=[("h", b"\xc3\x28"), ("ok", b"yes")])
        await plain.send_and_wait(topic, None, key=b"tombstone")
    finally:
        await plain.stop()

    records = []
    async with RedpandaConsumer(settings, topics=[topic], group_id=unique("bad")) as consumer:
        async with asyncio.timeout(30):
            async for record in consumer:
                records.append(record)
                if len(records) == len(raw) + 1:
                    break
    assert [r.value for r in records] == [b'{"broken": ', b"\xff\xfe\x00", b"[1, 2]", b"", {"ok": 1}, None]
    assert all(r.headers == {"h": b"\xc3\x28", "ok": "yes"} for r in records[:-1])


async def test_send_before_start_and_after_stop_is_a_state_error(
    settings: RedpandaSettings, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.state")
    producer = RedpandaProducer(settings)
    with pytest.raises(ClientStateError, match="not started"):
        await producer.send(topic=topic, key="k", value=b"v")
    async with producer:
        await producer.send(topic=topic, key="k", value=b"v")
    with pytest.raises(ClientStateError, match="stopped"):
        await producer.send(topic=topic, key="k", value=b"v")
    with pytest.raises(ClientStateError, match="stopped"):
        await producer.start()
