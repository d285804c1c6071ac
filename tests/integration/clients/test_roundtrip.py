"""Values, keys and headers survive the trip through the real broker; per-key order holds."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal

from faststream.kafka import KafkaBroker

from alpha_streaming import EventEnvelope, RedpandaConsumer, RedpandaProducer, RedpandaSettings
from alpha_streaming._broker import make_broker
from alpha_streaming._clients import ConsumedRecord
from alpha_streaming._envelope import EnvelopeHeaders
from tests.conftest import NewTopicFactory


async def consume(consumer: RedpandaConsumer, count: int, deadline_s: float = 30.0) -> list[ConsumedRecord]:
    records: list[ConsumedRecord] = []
    async with asyncio.timeout(deadline_s):
        async for record in consumer:
            records.append(record)
            if len(records) == count:
                break
    return records


async def test_envelope_mapping_and_bytes_round_trip_with_keys_and_headers(
    settings: RedpandaSettings, new_topic: NewTopicFactory, unique: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.rt")
    envelope = EventEnvelope.create(
        type="order.filled", data={"qty": 3, "px": Decimal("101.25")}, source="tests", key="AAPL"
    )
    async with RedpandaProducer(settings) as producer:
        await producer.send(topic=topic, key="AAPL", value=envelope, headers={"traceparent": "00-abc-def-01"})
        await producer.send(topic=topic, key=b"k2", value={"px": Decimal("1.10"), "n": [1, 2]})
        await producer.send(
            topic=topic, key=None, value=b"\x00raw\xff", headers={"bin": b"\xfe\x01", "t": "é"}
        )

    async with RedpandaConsumer(settings, topics=[topic], group_id=unique("rt")) as consumer:
        env_rec, map_rec, raw_rec = await consume(consumer, 3)

    assert env_rec.key == b"AAPL"
    assert EventEnvelope.from_bytes(env_rec.raw_value or b"") == envelope
    assert env_rec.value == envelope.model_dump(mode="json")
    assert env_rec.headers["content-type"] == "application/json"
    assert env_rec.headers["traceparent"] == "00-abc-def-01"
    for name, value in envelope.headers().items():
        assert env_rec.headers[name] == value
    assert env_rec.headers[EnvelopeHeaders.ID] == envelope.id

    assert map_rec.key == b"k2"
    assert map_rec.value == {"px": "1.10", "n": [1, 2]}  # Decimal as a string: the one serialiser
    assert map_rec.headers == {"content-type": "application/json"}

    assert raw_rec.key is None
    assert raw_rec.value == b"\x00raw\xff"
    assert raw_rec.headers == {"bin": b"\xfe\x01", "t": "é"}
    assert [r.offset for r in (env_rec, map_rec, raw_rec)] == [0, 1, 2]


async def test_per_key_order_holds_across_six_partitions(
    settings: RedpandaSettings, new_topic: NewTopicFactory, unique: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=6, prefix="direct.order")
    keys = [f"strategy:{i}" for i in range(12)]
    per_key = 40
    async with RedpandaProducer(settings) as producer:
        # Half through the pipelined batch send, half one by one: both must keep key order.
        await producer.send_many(topic, [(key, {"seq": seq}) for seq in range(per_key // 2) for key in keys])
        for seq in range(per_key // 2, per_key):
            for key in keys:
                await producer.send(topic=topic, key=key, value={"seq": seq})

    async with RedpandaConsumer(settings, topics=[topic], group_id=unique("order")) as consumer:
        records = await consume(consumer, len(keys) * per_key)

    seqs: dict[bytes, list[int]] = defaultdict(list)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        assert record.key is not None and isinstance(record.value, dict)
        seqs[record.key].append(record.value["seq"])
        partitions[record.key].add(record.partition)
    assert {k.decode() for k in seqs} == set(keys)
    assert all(s == list(range(per_key)) for s in seqs.values()), "a key's records came out of order"
    assert all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1, "keys should spread over partitions"


async def test_clients_share_an_existing_faststream_broker(
    settings: RedpandaSettings, new_topic: NewTopicFactory, unique: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=1, prefix="direct.shared")
    broker: KafkaBroker = make_broker(settings)
    await broker.connect()
    try:
        producer = RedpandaProducer.from_broker(broker)
        async with producer:
            assert producer.broker is broker
            await producer.send(topic=topic, key="k", value={"via": "shared"})
        # Stopping a producer that shares the broker leaves the broker's connection alone.
        await broker.publish({"via": "faststream"}, topic=topic, key=b"k")
        consumer = RedpandaConsumer.from_broker(broker, topics=[topic], group_id=unique("shared"))
        async with consumer:
            records = await consume(consumer, 2)
    finally:
        await broker.stop()
    assert [r.value for r in records] == [{"via": "shared"}, {"via": "faststream"}]
