"""`MetricsMiddleware` under TestKafkaBroker: outcomes counted once, bounded attributes, one trace.

The inner middlewares are stood in for by `_Outcomes`, which records the outcome the way error
routing does (the header `x-outcome` says which), so these tests pin the metrics logic alone;
the full stack is exercised by tests/unit/middlewares/test_unwrap_properties.py.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faststream import AckPolicy, BaseMiddleware
from faststream.exceptions import AckMessage
from faststream.kafka import KafkaBroker, TestKafkaBroker
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from alpha_streaming._errors import ConfigError
from middlewares._metrics import RAW_OUTCOME_ATTRIBUTE, UNROUTED, MetricsMiddleware
from middlewares._state import Outcome, state_of

SERVICE = "risk-manager"
TOPIC = "paper.orders.filled"


class Boom(RuntimeError):
    pass


class _Outcomes(BaseMiddleware):
    """Stands in for error routing + dedup: records the outcome named by the `x-outcome` header."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        state = state_of(msg)
        wanted = msg.headers.get("x-outcome", Outcome.PROCESSED.value)
        if wanted == UNROUTED:
            return await call_next(msg)  # no outcome recorded: the handler's error escapes
        state.outcome = Outcome(wanted)
        state.retries = int(msg.headers.get("x-retries", "0"))
        if "x-error" in msg.headers:
            state.error = Boom(msg.headers["x-error"])
        if "x-outage" in msg.headers:
            state.redis_outage = msg.headers["x-outage"]
        if state.outcome in {Outcome.DEDUPLICATED, Outcome.DEAD_LETTERED}:
            raise AckMessage
        return await call_next(msg)

    async def after_processed(self, exc_type: Any = None, exc_val: Any = None, exc_tb: Any = None) -> bool:
        return isinstance(exc_val, AckMessage)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics(reader: InMemoryMetricReader, spans: InMemorySpanExporter) -> MetricsMiddleware:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return MetricsMiddleware(
        service=SERVICE,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
    )


def points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
    return found


def process_spans(spans: InMemorySpanExporter) -> list[Any]:
    return [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER and "process" in s.name]


def scrape(port: int | None) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def values(reader: InMemoryMetricReader, name: str, key: str) -> dict[str, float]:
    return {attrs[key]: point.value for attrs, point in points(reader, name)}


def make_broker(metrics: MetricsMiddleware) -> tuple[KafkaBroker, list[Any]]:
    broker = KafkaBroker(middlewares=(metrics, _Outcomes))
    handled: list[Any] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        handled.append(body)
        if body.get("fail"):
            raise Boom(f"failed on {body['n']}")  # the message differs per event

    return broker, handled


async def test_each_outcome_is_counted_once(metrics: MetricsMiddleware, reader: InMemoryMetricReader) -> None:
    broker, handled = make_broker(metrics)
    async with TestKafkaBroker(broker) as br:
        await br.publish({"n": 1}, TOPIC)
        retried = {"x-outcome": "processed", "x-retries": "2", "x-error": "x"}
        await br.publish({"n": 2}, TOPIC, headers=retried)
        await br.publish({"n": 3}, TOPIC, headers={"x-outcome": "deduplicated"})
        await br.publish(
            {"n": 4}, TOPIC, headers={"x-outcome": "dead_lettered", "x-retries": "4", "x-error": "gone"}
        )
        await br.publish({"n": 5}, TOPIC, headers={"x-outcome": "redeliver", "x-outage": "paused"})

    assert [b["n"] for b in handled] == [1, 2, 5]  # duplicate and dead letter skipped the handler
    assert values(reader, "alpha.messages", "outcome") == {
        "processed": 2,
        "deduplicated": 1,
        "dead_lettered": 1,
        "redeliver": 1,
    }
    # 2 failed attempts before the success, 4 + the final one for the dead letter: not double-counted
    # as a failure *and* a dead letter message, and the retries separately.
    assert values(reader, "alpha.messages.failed", "error.type") == {"Boom": 2 + 5}
    assert values(reader, "alpha.messages.retried", "topic") == {TOPIC: 2 + 4}
    assert values(reader, "alpha.dedup.redis_outage", "mode") == {"paused": 1}
    durations = {attrs["outcome"]: point.count for attrs, point in points(reader, "alpha.message.duration")}
    assert durations == {"processed": 2, "deduplicated": 1, "dead_lettered": 1, "redeliver": 1}


async def test_attributes_are_bounded(metrics: MetricsMiddleware, reader: InMemoryMetricReader) -> None:
    broker, _ = make_broker(metrics)
    async with TestKafkaBroker(broker) as br:
        for n in range(40):
            outcome = "dead_lettered" if n % 2 else "processed"
            headers = {"x-outcome": outcome, "x-error": f"unique message {n}"}
            await br.publish({"n": n}, TOPIC, headers=headers, key=f"k{n}".encode())

    messages = points(reader, "alpha.messages")
    assert len(messages) == 2  # one series per outcome, whatever the keys, bodies and error texts
    for attrs, _ in messages:
        assert set(attrs) == {"service", "topic", "broker", "outcome"}
        assert (attrs["service"], attrs["topic"], attrs["broker"]) == (SERVICE, TOPIC, "paper")
    failed = points(reader, "alpha.messages.failed")
    assert [attrs["error.type"] for attrs, _ in failed] == ["Boom"]  # the class, never the message


class _DeadLetterUnparsed(BaseMiddleware):
    """Stands in for error routing's handling of a record FastStream could not parse."""

    async def after_processed(self, exc_type: Any = None, exc_val: Any = None, exc_tb: Any = None) -> bool:
        if isinstance(exc_val, UnicodeDecodeError):
            setattr(self.msg, RAW_OUTCOME_ATTRIBUTE, Outcome.DEAD_LETTERED)
            return True
        return False


async def test_a_record_that_cannot_be_parsed_is_counted_once(
    metrics: MetricsMiddleware, reader: InMemoryMetricReader
) -> None:
    broker = KafkaBroker(middlewares=(metrics, _DeadLetterUnparsed))
    subscriber = broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    handled: list[Any] = []

    @subscriber
    async def handle(body: Any) -> None:
        handled.append(body)

    record = ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"{}",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=2,
        headers=[("x-binary", b"\xff\xfe")],  # not UTF-8: FastStream's parser raises
    )
    async with TestKafkaBroker(broker):
        await subscriber.process_message(record)

    assert handled == []
    assert values(reader, "alpha.messages", "outcome") == {"dead_lettered": 1}


async def test_in_flight_counts_the_message_being_handled(
    metrics: MetricsMiddleware, reader: InMemoryMetricReader
) -> None:
    broker = KafkaBroker(middlewares=(metrics,))
    seen: list[float] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        seen.append(values(reader, "alpha.messages.in_flight", "topic")[TOPIC])

    async with TestKafkaBroker(broker) as br:
        await br.publish({"n": 1}, TOPIC)
        await br.publish({"n": 2}, TOPIC)

    assert seen == [1, 1]
    assert values(reader, "alpha.messages.in_flight", "topic") == {TOPIC: 0}
    # No constant label (it was state="in_flight"): only what tells series apart.
    assert [attrs for attrs, _ in points(reader, "alpha.messages.in_flight")] == [
        {"service": SERVICE, "topic": TOPIC, "broker": "paper"}
    ]


async def test_batch_counts_every_record(metrics: MetricsMiddleware, reader: InMemoryMetricReader) -> None:
    broker = KafkaBroker(middlewares=(metrics, _Outcomes))

    @broker.subscriber(TOPIC, group_id="g", batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(bodies: list[dict[str, Any]]) -> None:
        pass

    async with TestKafkaBroker(broker) as br:
        await br.publish_batch({"n": 1}, {"n": 2}, {"n": 3}, topic=TOPIC)

    assert values(reader, "alpha.messages", "outcome") == {"processed": 3}


async def test_an_error_without_outcome_is_counted_and_raised(
    metrics: MetricsMiddleware, reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    broker, _ = make_broker(metrics)
    async with TestKafkaBroker(broker) as br:
        with pytest.raises(Boom):
            await br.publish({"n": 1, "fail": True}, TOPIC, headers={"x-outcome": UNROUTED})

    assert values(reader, "alpha.messages", "outcome") == {UNROUTED: 1}
    (consumer,) = process_spans(spans)
    assert consumer.status.status_code is StatusCode.ERROR


async def test_skipping_the_handler_is_not_a_span_error(
    metrics: MetricsMiddleware, spans: InMemorySpanExporter
) -> None:
    broker, _ = make_broker(metrics)
    async with TestKafkaBroker(broker) as br:
        await br.publish({"n": 1}, TOPIC, headers={"x-outcome": "deduplicated"})

    (consumer,) = process_spans(spans)
    assert consumer.status.status_code is not StatusCode.ERROR


async def test_publish_inside_a_handler_joins_the_consumer_trace(
    metrics: MetricsMiddleware, spans: InMemorySpanExporter
) -> None:
    broker = KafkaBroker(middlewares=(metrics, _Outcomes))
    downstream = "paper.orders.booked"
    received: list[Any] = []

    @broker.subscriber(TOPIC, group_id="a", ack_policy=AckPolicy.MANUAL)
    async def first(body: dict[str, Any]) -> None:
        await broker.publish({"child_of": body["n"]}, downstream)

    @broker.subscriber(downstream, group_id="b", ack_policy=AckPolicy.MANUAL)
    async def second(body: dict[str, Any]) -> None:
        received.append(body)

    async with TestKafkaBroker(broker) as br:
        await br.publish({"n": 7}, TOPIC)

    assert received == [{"child_of": 7}]
    finished = spans.get_finished_spans()
    process = {s.name: s for s in finished if s.kind is SpanKind.CONSUMER and s.name.endswith(" process")}
    producer = [s for s in finished if s.kind is SpanKind.PRODUCER and s.name.startswith(downstream)]
    assert set(process) == {f"{TOPIC} process", f"{downstream} process"}
    upstream_trace = process[f"{TOPIC} process"].context.trace_id
    assert producer and {s.context.trace_id for s in producer} == {upstream_trace}
    assert process[f"{downstream} process"].context.trace_id == upstream_trace


async def test_handler_result_publish_joins_the_consumer_trace(
    metrics: MetricsMiddleware, spans: InMemorySpanExporter
) -> None:
    broker = KafkaBroker(middlewares=(metrics, _Outcomes))
    downstream = "paper.orders.booked"

    @broker.subscriber(TOPIC, group_id="a", ack_policy=AckPolicy.MANUAL)
    @broker.publisher(downstream)
    async def first(body: dict[str, Any]) -> dict[str, Any]:
        return {"child_of": body["n"]}

    async with TestKafkaBroker(broker) as br:
        await br.publish({"n": 8}, TOPIC)

    finished = spans.get_finished_spans()
    traces = {s.context.trace_id for s in finished}
    assert any(s.kind is SpanKind.PRODUCER and s.name.startswith(downstream) for s in finished)
    assert len(traces) == 1


async def test_private_provider_serves_prometheus_and_reads_back() -> None:
    metrics = MetricsMiddleware(service=SERVICE, prometheus_port=0)
    try:
        assert metrics.prometheus_port
        broker, _ = make_broker(metrics)
        async with TestKafkaBroker(broker) as br:
            await br.publish({"n": 1}, TOPIC)
            await br.publish({"n": 2}, TOPIC, headers={"x-outcome": "deduplicated"})

        text = await asyncio.to_thread(scrape, metrics.prometheus_port)
        scraped = {
            sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "alpha_messages_total" and sample.labels["service"] == SERVICE
        }
        assert scraped == {"processed": 1, "deduplicated": 1}
        # The OTel resource names the service; the endpoint is local-only unless asked.
        assert f'service_name="{SERVICE}"' in text
        assert metrics._private is not None and metrics._private.server is not None
        assert metrics._private.server.server_address[0] == "127.0.0.1"
        samples = {(s.name, s.attributes.get("outcome")): s.value for s in metrics.read()}
        assert samples[("alpha.messages", "processed")] == 1
        assert samples[("alpha.messages", "deduplicated")] == 1
    finally:
        port = metrics.prometheus_port
        metrics.shutdown()
    with pytest.raises(urllib.error.URLError, match="refused"):
        await asyncio.to_thread(scrape, port)


def test_two_middlewares_on_one_port_share_the_endpoint() -> None:
    first = MetricsMiddleware(service="a", prometheus_port=0)
    second = MetricsMiddleware(service="b", prometheus_port=first.prometheus_port)
    try:
        assert second.meter_provider is first.meter_provider
        first.shutdown()  # the second still uses the server
        second.instruments.messages.series({"service": "b"}).value += 1
        assert 'service="b"' in scrape(second.prometheus_port)
    finally:
        second.shutdown()


def test_config_is_checked_up_front() -> None:
    with pytest.raises(ConfigError, match="either meter_provider or prometheus_port"):
        MetricsMiddleware(service=SERVICE, meter_provider=MeterProvider(), prometheus_port=9464)
    with pytest.raises(ConfigError, match="prometheus_port"):
        MetricsMiddleware(service=SERVICE, prometheus_port=70000)
    with pytest.raises(ConfigError, match="service"):
        MetricsMiddleware(service="")
    with pytest.raises(ConfigError, match="own MetricReader"):
        MetricsMiddleware(service=SERVICE, meter_provider=MeterProvider()).read()


async def test_middlewares_sharing_a_provider_add_up(reader: InMemoryMetricReader) -> None:
    provider = MeterProvider(metric_readers=[reader])
    first = MetricsMiddleware(service=SERVICE, meter_provider=provider)
    second = MetricsMiddleware(service=SERVICE, meter_provider=provider)
    assert first.instruments is second.instruments  # created once per provider
    for metrics in (first, second):
        broker, _ = make_broker(metrics)
        async with TestKafkaBroker(broker) as br:
            await br.publish({"n": 1}, TOPIC)

    assert values(reader, "alpha.messages", "outcome") == {"processed": 2}


async def test_no_spans_are_made_until_a_tracer_provider_is_configured(
    reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    metrics = MetricsMiddleware(service=SERVICE, meter_provider=MeterProvider(metric_readers=[reader]))
    broker, handled = make_broker(metrics)
    async with TestKafkaBroker(broker) as br:
        await br.publish({"n": 1}, TOPIC)
        assert metrics._telemetry is None, "no tracer provider: FastStream's span middleware is left out"
        assert values(reader, "alpha.messages", "outcome") == {"processed": 1}

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # as set_tracer_provider does
        await br.publish({"n": 2}, TOPIC)
    assert [b["n"] for b in handled] == [1, 2]
    assert metrics._telemetry is not None
    assert len(process_spans(exporter)) == 1, "spans once a global provider is set"
