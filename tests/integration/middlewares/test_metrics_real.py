"""`MetricsMiddleware` against the real Kafka: Prometheus scrape, consumer lag, one trace across hops."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from alpha_streaming._broker import make_broker
from alpha_streaming._serialization import dumps
from alpha_streaming._settings import RedpandaSettings
from middlewares._metrics import MetricsMiddleware
from tests.support import eventually

SERVICE = "metrics-it"


def scrape(port: int | None) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def prefill(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for n in range(count):
            await producer.send(topic, dumps({"n": n}), partition=n % partitions)
        await producer.flush()
    finally:
        await producer.stop()


def broker_with(metrics: MetricsMiddleware, bootstrap: str) -> KafkaBroker:
    return make_broker(RedpandaSettings(bootstrap_servers=bootstrap), middlewares=(metrics,))


async def test_prometheus_serves_counters_and_lag_drains_to_zero(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique: Callable[[str], str]
) -> None:
    topic = await new_topic(partitions=2, prefix="paper.metrics")
    count = 40
    await prefill(kafka_bootstrap, topic, count, partitions=2)
    metrics = MetricsMiddleware(service=SERVICE, prometheus_port=0)
    broker = broker_with(metrics, kafka_bootstrap)
    handled: list[int] = []
    lag_while_behind: list[float] = []

    @broker.subscriber(topic, group_id=unique("g"), auto_offset_reset="earliest", ack_policy=AckPolicy.ACK)
    async def handle(body: dict[str, Any]) -> None:
        handled.append(body["n"])
        if len(handled) == 2:  # the end offsets are known from the fetch, most records are not processed
            lag = [s.value for s in metrics.read() if s.name == "alpha.consumer.lag"]
            lag_while_behind.append(sum(lag))

    try:
        await broker.start()
        await eventually(lambda: len(handled) == count, f"{count} handled messages")
        scraped = await asyncio.to_thread(scrape, metrics.prometheus_port)
    finally:
        await broker.stop()
        metrics.shutdown()

    assert sorted(handled) == list(range(count))
    assert lag_while_behind and lag_while_behind[0] > 0
    processed = [
        value
        for labels, value in scraped["alpha_messages_total"]
        if labels["outcome"] == "processed" and labels["topic"] == topic and labels["service"] == SERVICE
    ]
    assert processed == [count]
    lag = {int(labels["partition"]): value for labels, value in scraped["alpha_consumer_lag"]}
    assert lag == {0: 0, 1: 0}
    assert [value for _, value in scraped["alpha_messages_in_flight"]] == [0]


async def test_consumer_spans_share_one_trace_across_a_publish(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], unique: Callable[[str], str]
) -> None:
    first_topic = await new_topic(prefix="paper.trace")
    second_topic = await new_topic(prefix="paper.trace")
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = MetricsMiddleware(service=SERVICE, tracer_provider=tracer_provider)
    broker = broker_with(metrics, kafka_bootstrap)
    arrived: list[Any] = []

    @broker.subscriber(
        first_topic, group_id=unique("a"), auto_offset_reset="earliest", ack_policy=AckPolicy.ACK
    )
    async def first(body: dict[str, Any]) -> None:
        await broker.publish({"child_of": body["n"]}, second_topic)

    @broker.subscriber(
        second_topic, group_id=unique("b"), auto_offset_reset="earliest", ack_policy=AckPolicy.ACK
    )
    async def second(body: dict[str, Any]) -> None:
        arrived.append(body)

    def process_spans() -> dict[str, Any]:
        return {
            s.name: s
            for s in exporter.get_finished_spans()
            if s.kind is SpanKind.CONSUMER and s.name.endswith(" process")
        }

    try:
        await broker.start()
        await broker.publish({"n": 1}, first_topic)
        await eventually(lambda: arrived == [{"child_of": 1}], "the downstream message")
        names = {f"{first_topic} process", f"{second_topic} process"}
        await eventually(lambda: names <= set(process_spans()), "both consumer spans to end")
    finally:
        await broker.stop()
        metrics.shutdown()

    spans = process_spans()
    upstream, downstream = spans[f"{first_topic} process"], spans[f"{second_topic} process"]
    assert upstream.context.trace_id == downstream.context.trace_id
    assert upstream.context.span_id != downstream.context.span_id
