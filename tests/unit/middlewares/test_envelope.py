"""`EnvelopeMiddleware` under TestKafkaBroker: wrap on publish, validate and unwrap on consume.

`_Wire` sits inside the envelope middleware and records each publish command as it leaves the
chain (body bytes, headers, correlation id): what a real producer would put on the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import pytest
from faststream import AckPolicy, BaseMiddleware
from faststream.kafka import KafkaBroker, KafkaMessage, KafkaPublishMessage, TestKafkaBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel, ValidationError

from alpha_streaming import _lineage as lineage
from alpha_streaming import _serialization as serialization
from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import ConfigError, EnvelopeError
from alpha_streaming._ids import child_id
from alpha_streaming._topics import BrokerContext
from middlewares._envelope import (
    CurrentBrokerContext,
    CurrentEnvelope,
    CurrentEnvelopes,
    EnvelopeMiddleware,
)
from middlewares._state import current_state
from tests.support import Spy

SOURCE = "risk-manager"
TOPIC = "paper.orders.filled"


class OrderFilled(BaseModel):
    order_id: str
    qty: int
    price: Decimal


@dataclasses.dataclass
class Tick:
    token: int
    ltp: float


class _Wire(BaseMiddleware):
    """Records what leaves the middleware chain on publish."""

    sent: list[dict[str, Any]]

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        _Wire.sent.append(
            {
                "bodies": list(cmd.batch_bodies),
                "headers": dict(cmd.headers),
                "correlation_id": cmd.correlation_id,
                "keys": [cmd.key_for(i) for i in range(len(cmd.batch_bodies))],
            }
        )
        return await call_next(cmd)


@pytest.fixture
def wire() -> list[dict[str, Any]]:
    _Wire.sent = []
    return _Wire.sent


def make_broker(spy: Spy | None = None) -> KafkaBroker:
    return KafkaBroker(middlewares=[spy or Spy(), EnvelopeMiddleware(source=SOURCE), _Wire])


def envelope_of(sent: dict[str, Any], index: int = 0) -> EventEnvelope:
    return EventEnvelope.from_bytes(sent["bodies"][index])


def test_source_is_required() -> None:
    with pytest.raises(ConfigError, match="source"):
        EnvelopeMiddleware(source="")


# ---------------------------------------------------------------- publish


async def test_publish_wraps_a_model_and_mirrors_identity_in_headers(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    async with TestKafkaBroker(broker) as br:
        await br.publish(OrderFilled(order_id="o-1", qty=5, price=Decimal("101.25")), TOPIC, key=b"s1:256265")
    (sent,) = wire
    envelope = envelope_of(sent)
    assert envelope.type == "OrderFilled"
    assert envelope.source == SOURCE
    assert envelope.key == "s1:256265"
    assert envelope.broker == "paper"
    assert envelope.is_root and envelope.correlation_id == envelope.id
    assert envelope.data == {"order_id": "o-1", "qty": 5, "price": "101.25"}  # Decimal kept as a string
    headers = sent["headers"]
    assert headers[EnvelopeHeaders.ID] == envelope.id
    assert headers[EnvelopeHeaders.TYPE] == "OrderFilled"
    assert headers[EnvelopeHeaders.SOURCE] == SOURCE
    assert headers[EnvelopeHeaders.CORRELATION_ID] == envelope.id
    assert headers[EnvelopeHeaders.BROKER] == "paper"
    assert EnvelopeHeaders.CAUSATION_ID not in headers
    assert headers["content-type"] == "application/json"
    assert sent["correlation_id"] == envelope.correlation_id


@pytest.mark.parametrize(
    ("body", "headers", "expected_type"),
    [
        ({"order_id": "o-1"}, {}, TOPIC),  # a mapping: typed by its topic
        ({"order_id": "o-1"}, {EnvelopeHeaders.TYPE: "order.filled"}, "order.filled"),
        (OrderFilled(order_id="o", qty=1, price=Decimal(1)), {EnvelopeHeaders.TYPE: "x.y"}, "x.y"),
        (Tick(token=256265, ltp=1.5), {}, TOPIC),
        (b'{"order_id": "o-1"}', {}, TOPIC),  # JSON bytes without an event id: wrapped
        (None, {}, TOPIC),
    ],
)
async def test_event_type_rule(
    wire: list[dict[str, Any]], body: Any, headers: dict[str, str], expected_type: str
) -> None:
    broker = make_broker()
    async with TestKafkaBroker(broker) as br:
        await br.publish(body, TOPIC, headers=headers)
    envelope = envelope_of(wire[0])
    assert envelope.type == expected_type
    assert wire[0]["headers"][EnvelopeHeaders.TYPE] == expected_type


async def test_a_dict_with_an_id_key_is_still_wrapped(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    looks_like_envelope = {"id": "not-an-envelope", "type": "t", "source": "s", "data": {"a": 1}}
    async with TestKafkaBroker(broker) as br:
        await br.publish(looks_like_envelope, TOPIC)
    envelope = envelope_of(wire[0])
    assert envelope.id != "not-an-envelope"
    assert envelope.data == looks_like_envelope


async def test_an_envelope_is_not_wrapped_twice(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    original = EventEnvelope.create(type="order.filled", data={"a": 1}, source="engine", key="k")
    async with TestKafkaBroker(broker) as br:
        await br.publish(original, TOPIC)
        await br.publish(original.to_bytes(), TOPIC, headers=original.headers())
    first, second = wire
    assert envelope_of(first) == original
    assert first["headers"][EnvelopeHeaders.ID] == original.id
    assert first["headers"][EnvelopeHeaders.SOURCE] == "engine"
    assert second["bodies"] == [original.to_bytes()]  # bytes with an event id header: sent as they are


@pytest.mark.parametrize("body", [[1, 2, 3], "plain text", b"[1, 2]", 42])
async def test_a_payload_that_is_not_a_json_object_is_refused(body: Any) -> None:
    broker = make_broker()
    async with TestKafkaBroker(broker) as br:
        with pytest.raises(TypeError, match="JSON object"):
            await br.publish(body, TOPIC)


async def test_publish_batch_wraps_every_body_with_its_own_key(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(
            KafkaPublishMessage({"n": 1}, key=b"k1"),
            KafkaPublishMessage({"n": 2}, key=b"k2"),
            {"n": 3},
            topic=TOPIC,
        )
    (sent,) = wire
    envelopes = [envelope_of(sent, i) for i in range(3)]
    assert [e.data for e in envelopes] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [e.key for e in envelopes] == ["k1", "k2", None]
    assert sent["keys"] == [b"k1", b"k2", None]
    assert len({e.id for e in envelopes}) == 3
    # One header set for the whole batch: only what every envelope shares is mirrored.
    assert EnvelopeHeaders.ID not in sent["headers"]
    assert EnvelopeHeaders.CORRELATION_ID not in sent["headers"]  # three roots, three chains
    assert sent["headers"][EnvelopeHeaders.SOURCE] == SOURCE
    assert sent["headers"][EnvelopeHeaders.TYPE] == TOPIC


async def test_trace_ids_come_from_the_active_span(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    tracer = TracerProvider().get_tracer("test")
    async with TestKafkaBroker(broker) as br:
        with tracer.start_as_current_span("work") as span:
            await br.publish({"a": 1}, TOPIC)
    trace_id = format(span.get_span_context().trace_id, "032x")
    envelope = envelope_of(wire[0])
    assert envelope.trace_id == trace_id
    assert envelope.parent_trace_id is None  # a root event has no causing event
    assert wire[0]["headers"][EnvelopeHeaders.TRACEPARENT].split("-")[1] == trace_id


async def test_trace_id_prefers_the_traceparent_header(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with TestKafkaBroker(broker) as br:
        await br.publish({"a": 1}, TOPIC, headers={"traceparent": traceparent})
    assert envelope_of(wire[0]).trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert wire[0]["headers"]["traceparent"] == traceparent


async def test_publish_outside_any_span_has_no_trace_id(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    async with TestKafkaBroker(broker) as br:
        await br.publish({"a": 1}, TOPIC)
    assert envelope_of(wire[0]).trace_id is None
    assert "traceparent" not in wire[0]["headers"]


# ---------------------------------------------------------------- consume


async def test_handler_gets_the_decoded_payload_envelope_and_broker_context(
    spy: Spy,
) -> None:
    broker = make_broker(spy)
    got: list[tuple[OrderFilled, EventEnvelope, BrokerContext]] = []

    @broker.subscriber(TOPIC, group_id="risk.fills", ack_policy=AckPolicy.MANUAL)
    async def handle(order: OrderFilled, envelope: CurrentEnvelope, where: CurrentBrokerContext) -> None:
        got.append((order, envelope, where))

    sent = EventEnvelope.create(
        type="order.filled", data={"order_id": "o-7", "qty": 3, "price": "2450.05"}, source="engine"
    )
    async with TestKafkaBroker(broker) as br:
        await br.publish(sent, TOPIC, partition=0)
    ((order, envelope, where),) = got
    assert order == OrderFilled(order_id="o-7", qty=3, price=Decimal("2450.05"))
    assert envelope == sent
    assert where == BrokerContext(broker="paper", topic=TOPIC, partition=0, offset=0, group_id="risk.fills")
    (state,) = spy.states
    assert state.envelope == sent
    assert state.broker_context == where


async def test_injection_does_not_leak_into_the_next_message() -> None:
    broker = make_broker()
    seen: list[Any] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        seen.append(envelope.id)

    other = KafkaBroker()  # no envelope middleware on this one

    @other.subscriber("paper.plain", group_id="g2")
    async def plain(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        seen.append(envelope)

    async with TestKafkaBroker(broker) as br, TestKafkaBroker(other) as ob:
        await br.publish({"a": 1}, TOPIC)
        assert current_state() is None
        assert lineage.current_event() is None
        with pytest.raises(EnvelopeError, match="is EnvelopeMiddleware installed"):
            await ob.publish({"b": 2}, "paper.plain")
    assert len(seen) == 1
    assert isinstance(seen[0], str)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xffnot json",
        b'{"order_id": "o-1"}',  # JSON, but no envelope
        b'{"id": "x", "type": "", "source": "s", "data": {}}',  # empty type
        b'{"type": "t", "source": "s", "data": [1, 2]}',  # data is not an object
        b"",
    ],
)
async def test_an_invalid_envelope_is_a_permanent_error(raw: bytes) -> None:
    broker = make_broker()
    calls: list[Any] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: Any) -> None:
        calls.append(body)

    async with TestKafkaBroker(broker) as br:
        # An `x-event-id` header makes the publisher send the bytes untouched.
        with pytest.raises(EnvelopeError):
            await br.publish(raw, TOPIC, headers={EnvelopeHeaders.ID: "forged"})
    assert calls == []


async def test_a_payload_that_does_not_fit_the_model_raises_validation_error() -> None:
    broker = make_broker()

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(order: OrderFilled) -> None:
        raise AssertionError("must not run")

    async with TestKafkaBroker(broker) as br:
        with pytest.raises(ValidationError):
            await br.publish({"order_id": "o", "qty": "many", "price": "1"}, TOPIC)


async def test_each_attempt_reads_the_original_bytes() -> None:
    """A retry (another `call_next`) must see the same input, not the already-unwrapped body."""

    class _RetryOnce(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            try:
                return await call_next(msg)
            except RuntimeError:
                return await call_next(msg)

    broker = KafkaBroker(middlewares=[_RetryOnce, EnvelopeMiddleware(source=SOURCE)])
    bodies: list[dict[str, Any]] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
        bodies.append(body)
        if len(bodies) == 1:
            raise RuntimeError("first attempt fails")

    async with TestKafkaBroker(broker) as br:
        await br.publish({"qty": 1}, TOPIC)
    assert bodies == [{"qty": 1}, {"qty": 1}]


async def test_children_inherit_correlation_and_causation(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    out = broker.publisher("paper.orders.validated")

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    @broker.publisher("paper.orders.accepted")
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        await out.publish({"direct": True})
        return {"returned": True}  # published after the handler returns: still a child

    root = EventEnvelope.create(type="order.filled", data={}, source="engine", trace_id="a" * 32)
    async with TestKafkaBroker(broker) as br:
        await br.publish(root, TOPIC)
    children = [envelope_of(sent) for sent in wire[1:]]
    assert [c.data for c in children] == [{"direct": True}, {"returned": True}]
    for child, sent in zip(children, wire[1:], strict=True):
        assert child.correlation_id == root.id
        assert child.causation_id == root.id
        assert child.parent_trace_id == "a" * 32
        assert sent["headers"][EnvelopeHeaders.CAUSATION_ID] == root.id
        assert sent["correlation_id"] == root.id


async def test_child_ids_are_deterministic_per_topic_and_ordinal_on_every_run(
    wire: list[dict[str, Any]],
) -> None:
    broker = make_broker()
    audit, accepted = broker.publisher("paper.orders.audit"), broker.publisher("paper.orders.accepted")

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any]) -> None:
        await audit.publish({"n": 0})
        await accepted.publish({"n": 0})
        await audit.publish({"n": 1})
        await audit.publish({"n": 2}, headers={EnvelopeHeaders.ID: "caller-chosen"})

    root = EventEnvelope.create(type="order.filled", data={}, source="engine")
    runs = []
    async with TestKafkaBroker(broker) as br:
        for _ in range(2):  # the same event handled twice: a re-run after a crash
            wire.clear()
            await br.publish(root, TOPIC)
            runs.append([envelope_of(sent).id for sent in wire[1:]])
    expected = [
        str(child_id(root.id, "paper.orders.audit", 0)),
        str(child_id(root.id, "paper.orders.accepted", 0)),
        str(child_id(root.id, "paper.orders.audit", 1)),
        "caller-chosen",  # an explicit id wins and takes no ordinal
    ]
    assert runs == [expected, expected]


async def test_an_event_published_outside_any_handler_is_a_uuid7_root(wire: list[dict[str, Any]]) -> None:
    broker = make_broker()
    async with TestKafkaBroker(broker) as br:
        await br.publish({"a": 1}, "paper.elsewhere")
        await br.publish({"a": 1}, "paper.elsewhere")
    first, second = (envelope_of(sent) for sent in wire)
    assert uuid.UUID(first.id).version == 7
    assert first.id != second.id
    assert first.is_root


# ---------------------------------------------------------------- batch


async def test_batch_handler_gets_payloads_and_aligned_envelopes(spy: Spy) -> None:
    broker = make_broker(spy)
    got: list[tuple[list[OrderFilled], tuple[EventEnvelope, ...], BrokerContext]] = []

    @broker.subscriber(TOPIC, group_id="g", batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(
        orders: list[OrderFilled], envelopes: CurrentEnvelopes, where: CurrentBrokerContext
    ) -> None:
        got.append((orders, envelopes, where))

    sent = [
        EventEnvelope.create(type="t", data={"order_id": f"o-{i}", "qty": i, "price": "1.5"}, source="e")
        for i in range(3)
    ]
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(*sent, topic=TOPIC)
    ((orders, envelopes, where),) = got
    assert [o.order_id for o in orders] == ["o-0", "o-1", "o-2"]
    assert envelopes == tuple(sent)
    assert where.topic == TOPIC and where.group_id == "g"
    assert spy.states[0].batch_envelopes == tuple(sent)


async def test_one_invalid_record_fails_the_batch_and_names_it() -> None:
    broker = make_broker()
    calls: list[Any] = []

    @broker.subscriber(TOPIC, group_id="g", batch=True, ack_policy=AckPolicy.MANUAL)
    async def handle(body: list[dict[str, Any]]) -> None:
        calls.append(body)

    good = EventEnvelope.create(type="t", data={}, source="e").to_bytes()
    async with TestKafkaBroker(broker) as br:
        with pytest.raises(EnvelopeError, match="of a batch"):
            await br.publish_batch(good, b"garbage", topic=TOPIC, headers={EnvelopeHeaders.ID: "x"})
    assert calls == []


# ---------------------------------------------------------------- property


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=10),
        "type": st.text(max_size=10),
        "source": st.text(max_size=10),
        "ts": st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "yesterday", 5]),
        "data": _json,
        "version": _json,
        "correlation_id": _json,
    },
).map(serialization.dumps)
_valid = st.dictionaries(st.text(max_size=5), _json, max_size=3).map(
    lambda data: EventEnvelope.create(type="t", data=data, source="s").to_bytes()
)
_bodies = st.binary(max_size=200) | _json.map(serialization.dumps) | _envelope_like | _valid
_headers = st.dictionaries(
    st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=12),
    st.text(max_size=12),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_bodies, headers=_headers)
def test_any_bytes_and_headers_end_as_a_handled_event_or_a_permanent_error(
    raw: bytes, headers: dict[str, str]
) -> None:
    async def scenario() -> None:
        broker = KafkaBroker(middlewares=[EnvelopeMiddleware(source=SOURCE)])
        handled: list[dict[str, Any]] = []

        @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
        async def handle(body: dict[str, Any], envelope: CurrentEnvelope) -> None:
            handled.append(body)

        async with TestKafkaBroker(broker) as br:
            try:
                await br.publish(raw, TOPIC, headers={**headers, EnvelopeHeaders.ID: "forged"})
            except EnvelopeError:
                assert handled == []
                return
        assert handled == [EventEnvelope.from_bytes(raw).data]

    asyncio.run(scenario())


async def test_the_handler_gets_the_payload_parsed_with_the_envelope_not_parsed_again(
    wire: list[dict[str, Any]],
) -> None:
    broker = make_broker()
    got: list[tuple[Any, Any, bytes]] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope, msg: KafkaMessage) -> None:
        got.append((await msg.decode(), envelope, msg.body))

    sent = EventEnvelope.create(type="order.filled", data={"order_id": "o-1", "qty": 1}, source="engine")
    async with TestKafkaBroker(broker) as br:
        await br.publish(sent, TOPIC)
    ((body, envelope, raw),) = got
    assert body is envelope.data, "the message decodes to the dict validation produced"
    assert EventEnvelope.from_bytes(raw) == sent, "msg.body stays the record's bytes"


async def test_injected_envelope_and_context_are_resolved_without_a_worker_thread_or_task_group(
    wire: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio
    import fast_depends.core.model
    import fast_depends.utils

    hops: list[Any] = []
    groups: list[Any] = []
    threaded = fast_depends.utils.run_in_threadpool
    task_group = anyio.create_task_group

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await threaded(func, *args, **kwargs)

    def counted_group() -> Any:
        groups.append(1)
        return task_group()

    monkeypatch.setattr(fast_depends.utils, "run_in_threadpool", counting)
    monkeypatch.setattr(fast_depends.core.model.anyio, "create_task_group", counted_group)
    broker = make_broker()
    got: list[Any] = []

    @broker.subscriber(TOPIC, group_id="g", ack_policy=AckPolicy.MANUAL)
    async def handle(body: dict[str, Any], envelope: CurrentEnvelope, where: CurrentBrokerContext) -> None:
        got.append((envelope.type, where.topic))

    sent = EventEnvelope.create(type="order.filled", data={"qty": 1}, source="engine")
    async with TestKafkaBroker(broker) as br:
        await br.publish(sent, TOPIC)
    assert got == [("order.filled", TOPIC)]
    assert hops == [], "FastStream's plain Context would run each lookup in a worker thread"
    assert groups == [], "a Context field makes fast_depends open a task group per message"
