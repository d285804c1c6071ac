"""A built service against the real Kafka and Redis: handler shapes, broker context, lineage,
and `faststream run module:app` running the built app unchanged."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import BaseModel

from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._services.builder import StreamServiceBuilder
from alpha_streaming._services.service import CurrentProducer
from alpha_streaming._settings import DedupSettings, RedpandaSettings, Settings
from alpha_streaming._topics import BrokerContext
from middlewares._envelope import CurrentBrokerContext, CurrentEnvelope
from tests.conftest import NewTopicFactory
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]


class Signal(BaseModel):
    strategy: str
    token: int


async def send_envelopes(bootstrap: str, *items: tuple[str, EventEnvelope]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, envelope in items:
            await producer.send_and_wait(
                topic,
                envelope.to_bytes(),
                key=(envelope.key or "").encode(),
                headers=[(k, v.encode()) for k, v in envelope.headers().items()],
            )
    finally:
        await producer.stop()


async def read_records(bootstrap: str, topic: str, count: int, within_s: float = 30.0) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(within_s):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                records.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return records


async def test_legacy_and_typed_handlers_across_namespaces_with_lineage_on_the_wire(
    kafka_bootstrap: str,
    redis_client: aioredis.Redis,
    new_topic: NewTopicFactory,
    unique: Any,
) -> None:
    suffix = unique("b")
    paper = await new_topic(name=f"paper.signals.raw-{suffix}", partitions=2)
    zerodha = await new_topic(name=f"zerodha.signals.raw-{suffix}")
    ticks = await new_topic(name=f"market.ticks-{suffix}")
    validated = await new_topic(name=f"paper.signals.validated-{suffix}")
    prefix = unique("pfx") + "."
    config = RedpandaSettings(bootstrap_servers=kafka_bootstrap, group_id_prefix=prefix)
    legacy_seen: list[tuple[dict[str, Any], str]] = []
    typed_seen: list[tuple[Signal, EventEnvelope, BrokerContext]] = []

    async def on_tick(message: dict[str, Any], topic: str) -> None:
        legacy_seen.append((message, topic))

    async def on_signal(
        signal: Signal, envelope: CurrentEnvelope, ctx: CurrentBrokerContext, out: CurrentProducer
    ) -> None:
        typed_seen.append((signal, envelope, ctx))
        if ctx.broker == "paper":
            await out.send(topic=validated, value=signal, key=f"{signal.strategy}:{signal.token}")

    service = (
        StreamServiceBuilder(f"risk-{suffix}", config, Settings(redpanda=config))
        .add_consumer_handler(topics=[paper, zerodha], group_id="signals", handler_func=on_signal)
        .add_producer(topics=[validated])
        .add_consumer_handler(topics=[ticks], group_id="ticks", handler_func=on_tick)
        .with_redis(redis_client)
        .build()
    )
    tick = EventEnvelope.create(type="Tick", data={"token": 1}, source="feed", key="1")
    paper_signal = EventEnvelope.create(
        type="Signal", data={"strategy": "s1", "token": 5}, source="strat", key="s1:5", broker="paper"
    )
    zerodha_signal = EventEnvelope.create(
        type="Signal", data={"strategy": "s2", "token": 6}, source="strat", key="s2:6", broker="zerodha"
    )
    await send_envelopes(kafka_bootstrap, (ticks, tick), (paper, paper_signal), (zerodha, zerodha_signal))
    await service.start()
    try:
        await eventually(lambda: len(legacy_seen) == 1 and len(typed_seen) == 2, "all three events handled")
        [child] = await read_records(kafka_bootstrap, validated, 1)
    finally:
        await service.stop()

    assert legacy_seen == [(tick.model_dump(mode="json"), ticks)]
    by_broker = {ctx.broker: (signal, envelope, ctx) for signal, envelope, ctx in typed_seen}
    assert set(by_broker) == {"paper", "zerodha"}
    for name, topic, sent in (("paper", paper, paper_signal), ("zerodha", zerodha, zerodha_signal)):
        signal, envelope, ctx = by_broker[name]
        assert envelope == sent
        assert signal == Signal.model_validate(sent.data)
        assert (ctx.topic, ctx.offset, ctx.group_id) == (topic, 0, f"{prefix}signals")
    # The child as it is on the wire: a new envelope in the parent's chain, mirrored in headers.
    wire = EventEnvelope.from_bytes(child.value)
    headers = {k: v.decode() for k, v in child.headers}
    assert wire.correlation_id == paper_signal.correlation_id
    assert wire.causation_id == paper_signal.id
    assert wire.source == f"risk-{suffix}"
    assert wire.data == paper_signal.data
    assert child.key == b"s1:5"
    assert headers[EnvelopeHeaders.ID] == wire.id
    assert headers[EnvelopeHeaders.CAUSATION_ID] == paper_signal.id
    assert headers[EnvelopeHeaders.CORRELATION_ID] == paper_signal.correlation_id


# --- `faststream run tests.integration.test_builder_real:app` -------------------------------
# Built at import with topics from the environment; the test below runs it in a subprocess.
RUN_IN = os.environ.get("ALPHA_TEST_RUN_IN", "builder.run.in")
RUN_OUT = os.environ.get("ALPHA_TEST_RUN_OUT", "builder.run.out")


async def _forward(message: dict[str, Any], topic: str) -> None:
    await cli_service.producer.send(topic=RUN_OUT, value={"seen": message["id"]})


cli_service = (
    StreamServiceBuilder(
        "cli-run", RedpandaSettings(), Settings(dedup=DedupSettings(enabled=False)), graceful_timeout=5
    )
    .add_consumer_handler(
        topics=[RUN_IN], group_id=os.environ.get("ALPHA_TEST_RUN_GROUP", "cli"), handler_func=_forward
    )
    .add_producer(topics=[RUN_OUT])
    .build()
)
app = cli_service.app


async def test_faststream_run_runs_the_built_app_unchanged(
    kafka_bootstrap: str, new_topic: NewTopicFactory, unique: Any
) -> None:
    topic_in = await new_topic(prefix="run.in")
    topic_out = await new_topic(prefix="run.out")
    event = EventEnvelope.create(type="Ping", data={"n": 1}, source="test")
    await send_envelopes(kafka_bootstrap, (topic_in, event))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ALPHA_TEST_RUN_IN": topic_in,
        "ALPHA_TEST_RUN_OUT": topic_out,
        "ALPHA_TEST_RUN_GROUP": unique("cli"),
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "faststream"),
        "run",
        "tests.integration.test_builder_real:app",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        [record] = await read_records(kafka_bootstrap, topic_out, 1, within_s=60)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    forwarded = EventEnvelope.from_bytes(record.value)
    assert forwarded.data == {"seen": event.id}
    assert forwarded.causation_id == event.id
    assert process.returncode == 0, output.decode(errors="replace")
