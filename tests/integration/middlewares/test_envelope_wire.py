"""Envelopes on the real wire: read back by independent clients, lineage across three hops."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._settings import RedpandaSettings
from middlewares._envelope import CurrentEnvelope
from middlewares._tier import EnhancedTier
from tests.support import eventually, read_topic, shut_down

NewTopic = Callable[..., Awaitable[str]]


class OrderFilled(BaseModel):
    order_id: str
    qty: int
    price: Decimal


def service(bootstrap: str, source: str) -> tuple[EnhancedTier, KafkaBroker]:
    """One service with the real enhanced tier (metrics aside: they have their own tests)."""
    tier = EnhancedTier(source, metrics=False)
    return tier, tier.broker(RedpandaSettings(bootstrap_servers=bootstrap))


async def stop(*services: tuple[EnhancedTier, KafkaBroker]) -> None:
    await asyncio.gather(*(shut_down(tier, broker) for tier, broker in services))


async def test_envelope_bytes_on_the_wire_read_by_independent_clients(
    kafka_bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(prefix="paper.orders")
    engine = service(kafka_bootstrap, "engine")
    _, producer = engine
    await producer.connect()
    try:
        await producer.publish(
            OrderFilled(order_id="o-1", qty=5, price=Decimal("2450.05")), topic, key=b"s1:256265"
        )
    finally:
        await stop(engine)

    (record,) = await read_topic(kafka_bootstrap, topic, 1)
    body = json.loads(record.value)  # the standard library, not our serialiser
    headers = {name: value.decode() for name, value in record.headers}
    assert record.key == b"s1:256265"
    assert body["type"] == "OrderFilled"
    assert body["source"] == "engine"
    assert body["key"] == "s1:256265"
    assert body["broker"] == "paper"
    assert body["correlation_id"] == body["id"]
    assert body["causation_id"] is None
    assert body["version"] == 1
    assert body["data"] == {"order_id": "o-1", "qty": 5, "price": "2450.05"}
    assert headers[EnvelopeHeaders.ID] == body["id"]
    assert headers[EnvelopeHeaders.TYPE] == "OrderFilled"
    assert headers[EnvelopeHeaders.SOURCE] == "engine"
    assert headers[EnvelopeHeaders.CORRELATION_ID] == body["id"]
    assert headers["content-type"] == "application/json"
    assert EventEnvelope.from_bytes(record.value).id == body["id"]

    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is part of the local stack (apt-get install -y kcat)"
    process = await asyncio.create_subprocess_exec(
        kcat, "-C", "-b", kafka_bootstrap, "-t", topic, "-o", "beginning", "-c", "1", "-e", "-J", "-q",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode().splitlines()[0])
    assert seen["key"] == "s1:256265"
    assert json.loads(seen["payload"]) == body
    kcat_headers = dict(zip(seen["headers"][::2], seen["headers"][1::2], strict=True))
    assert kcat_headers[EnvelopeHeaders.ID] == body["id"]
    assert kcat_headers[EnvelopeHeaders.CORRELATION_ID] == body["id"]


async def test_correlation_and_causation_across_three_hops(
    kafka_bootstrap: str, new_topic: NewTopic, unique: Callable[[str], str]
) -> None:
    t1, t2, t3 = [await new_topic(prefix=f"paper.hop{n}") for n in (1, 2, 3)]
    services = [service(kafka_bootstrap, name) for name in ("svc-a", "svc-b", "svc-c", "svc-d")]
    a, b, c, d = (broker for _, broker in services)
    options: dict[str, Any] = {"auto_offset_reset": "earliest"}  # the tier's brokers ack MANUAL

    @b.subscriber(t1, group_id=unique("b"), **options)
    @b.publisher(t2)
    async def hop_b(body: dict[str, Any]) -> dict[str, Any]:
        return {"hop": "b", "from": body["hop"]}  # published by FastStream after the handler returns

    @c.subscriber(t2, group_id=unique("c"), **options)
    async def hop_c(body: dict[str, Any]) -> None:
        await c.publish({"hop": "c", "from": body["hop"]}, t3)  # published from inside the handler

    arrived: list[EventEnvelope] = []

    @d.subscriber(t3, group_id=unique("d"), **options)
    async def hop_d(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        arrived.append(envelope)

    await asyncio.gather(a.connect(), b.start(), c.start(), d.start())
    try:
        await a.publish({"hop": "a"}, t1, key=b"chain")
        await eventually(lambda: bool(arrived), "the event to reach service D")
    finally:
        await stop(*services)

    (r1,), (r2,), (r3,) = [await read_topic(kafka_bootstrap, t, 1) for t in (t1, t2, t3)]
    e1, e2, e3 = (EventEnvelope.from_bytes(r.value) for r in (r1, r2, r3))
    assert [e.source for e in (e1, e2, e3)] == ["svc-a", "svc-b", "svc-c"]
    assert [e.data for e in (e1, e2, e3)] == [
        {"hop": "a"},
        {"hop": "b", "from": "a"},
        {"hop": "c", "from": "b"},
    ]
    assert e1.is_root
    assert {e.correlation_id for e in (e1, e2, e3)} == {e1.id}
    assert (e2.causation_id, e3.causation_id) == (e1.id, e2.id)
    for record, envelope in ((r2, e2), (r3, e3)):
        headers = {name: value.decode() for name, value in record.headers}
        assert headers[EnvelopeHeaders.CORRELATION_ID] == e1.id
        assert headers[EnvelopeHeaders.CAUSATION_ID] == envelope.causation_id
    assert arrived == [e3]
