"""Property: whatever bytes and headers arrive, the full enhanced tier ends each record as a
handled event or a dead-letter record (with the original bytes), and nothing escapes.

Each example is one raw `ConsumerRecord` handed to the subscriber of a broker carrying the whole
`EnhancedTier` (metrics, error routing, envelope, dedup with the real Redis, outputs) under
TestKafkaBroker. The dead-letter sink is swapped for one that records what it is given
(TestKafkaBroker has no real producer); the outcome is read from the tier's own `alpha.messages`
counter.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiokafka.structs import ConsumerRecord
from faststream.kafka import TestKafkaBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import BaseModel

from alpha_streaming._envelope import EventEnvelope
from alpha_streaming._serialization import dumps
from middlewares._dedup import DeduplicationMiddleware
from middlewares._envelope import EnvelopeMiddleware
from middlewares._error_routing import ErrorRoutingMiddleware
from middlewares._metrics import MetricsMiddleware
from middlewares._outputs import OutputsMiddleware
from middlewares._retry import RetryPolicy
from middlewares._tier import EnhancedTier
from tests.support import RecordingSink

TOPIC = "paper.orders.filled"
SERVICE = "unwrap-props"


class Fill(BaseModel):
    order_id: str
    qty: int


async def _no_wait(_: float) -> None:
    return None


@dataclass(frozen=True)
class Case:
    value: bytes | None
    headers: list[tuple[str, bytes]]
    key: bytes | None
    valid: bool = False
    """Built from a valid envelope, unchanged: must be handled, not dead-lettered."""


def _valid_envelope() -> EventEnvelope:
    return EventEnvelope.create(
        type="OrderFilled", data=Fill(order_id="o-1", qty=3), source="props", key="s1:7", broker="paper"
    )


def _encoded_headers(envelope: EventEnvelope) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in envelope.headers().items()]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
header_lists = st.lists(st.tuples(st.text(max_size=16), st.binary(max_size=24)), max_size=4)
FIELDS = tuple(EventEnvelope.model_fields)


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> Case:
    envelope = _valid_envelope()
    body: dict[str, Any] = envelope.model_dump(mode="json")
    headers = _encoded_headers(envelope) if draw(st.booleans()) else []
    mutation = draw(
        st.sampled_from(("drop", "retype", "garbage_data", "huge", "bad_utf8", "truncate", "none"))
    )
    if mutation == "drop":
        body.pop(draw(st.sampled_from(FIELDS)), None)
    elif mutation == "retype":
        body[draw(st.sampled_from(FIELDS))] = draw(json_values)
    elif mutation == "garbage_data":
        body["data"] = draw(json_values)
    elif mutation == "huge":
        body[draw(st.sampled_from(("type", "source", "key", "id")))] = "x" * draw(
            st.sampled_from((10_000, 1_000_000))
        )
    raw = dumps(body)
    if mutation == "bad_utf8":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xed\xa0\x80"))) + raw[at:]
    elif mutation == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    headers += draw(header_lists)
    return Case(raw, headers, draw(st.none() | st.binary(max_size=16)), valid=mutation == "none")


def _valid_case(with_headers: bool) -> Case:
    envelope = _valid_envelope()
    return Case(envelope.to_bytes(), _encoded_headers(envelope) if with_headers else [], b"s1:7", valid=True)


inputs = st.one_of(
    st.builds(Case, st.binary(max_size=512) | st.none(), header_lists, st.none() | st.binary(max_size=16)),
    st.builds(
        lambda v, h, k: Case(dumps(v), h, k), json_values, header_lists, st.none() | st.binary(max_size=16)
    ),
    mutated_envelopes(),
    st.builds(_valid_case, st.booleans()),
)


async def _run(redis_url: str, case: Case) -> tuple[dict[str, float], list[Fill], RecordingSink]:
    reader = InMemoryMetricReader()
    sink = RecordingSink()
    redis = aioredis.Redis.from_url(redis_url)
    tier = EnhancedTier(
        SERVICE,
        redis=redis,
        # A fresh namespace per example: hypothesis may replay one event id in several examples.
        dedup_namespace=f"props-{uuid.uuid4().hex[:12]}",
        policy=RetryPolicy(sleep=_no_wait),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    assert [type(m) for m in tier.middlewares] == [
        MetricsMiddleware,
        ErrorRoutingMiddleware,
        EnvelopeMiddleware,
        DeduplicationMiddleware,
        type(tier.pipeline.gate),
        OutputsMiddleware,
    ]
    tier.routing.dead_letter = sink
    broker = tier.broker()
    subscriber = broker.subscriber(TOPIC, group_id="props")
    handled: list[Fill] = []

    @subscriber
    async def handle(fill: Fill) -> None:
        handled.append(fill)

    record = ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=41,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=case.key,
        value=case.value,
        checksum=None,
        serialized_key_size=len(case.key or b""),
        serialized_value_size=len(case.value or b""),
        headers=list(case.headers),
    )
    try:
        async with TestKafkaBroker(broker):
            await subscriber.process_message(record)  # anything raised here fails the property
    finally:
        await tier.close()
        await redis.aclose()
    outcomes: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "alpha.messages":
                    for point in metric.data.data_points:
                        if point.value:
                            outcomes[str(point.attributes["outcome"])] = point.value  # type: ignore[index]
    return outcomes, handled, sink


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(case=inputs)
async def test_every_input_is_handled_or_dead_lettered(redis_url: str, case: Case) -> None:
    outcomes, handled, sink = await _run(redis_url, case)

    assert outcomes in ({"processed": 1}, {"dead_lettered": 1}), outcomes
    if "processed" in outcomes:
        assert len(handled) == 1 and sink.writes == []
        envelope = EventEnvelope.from_bytes(case.value or b"")  # it was a valid envelope
        assert handled[0] == Fill.model_validate(envelope.data)
    else:
        assert handled == []
        ((records, _error, _attempts, _group),) = sink.writes
        (written,) = records
        assert written.value == case.value  # the original bytes, untouched
        assert list(written.headers) == case.headers
        assert written.key == case.key
    if case.valid:
        assert outcomes == {"processed": 1}
