"""`EnvelopeMiddleware`: every event on the wire is an `EventEnvelope`; handlers see the payload.

Consume: the record bytes (`raw_message.value`, so an in-process retry sees the same input)
are validated as an envelope; an invalid one raises `EnvelopeError`, a permanent error that
error routing dead-letters. The handler then receives `envelope.data`, the dict validation
already produced (the message's decoder returns it: nothing is serialised or parsed again, and
`msg.body` stays the record's bytes), so `async def h(order: OrderFilled)` validates the
payload with pydantic (a payload that does not fit raises pydantic's `ValidationError`,
permanent too). The envelope and a `BrokerContext` are injectable (`CurrentEnvelope`,
`CurrentBrokerContext`) for the call only, and `lineage.processing_event(envelope)` is active,
so whatever the handler publishes becomes a child of the event.

Batch subscribers receive the list of payloads, in record order, and `CurrentEnvelopes` (a
tuple aligned with that list); `CurrentBrokerContext` describes the first record. One invalid
record fails the whole batch with `EnvelopeError` (error routing decides what to dead-letter);
nothing is dropped silently. Events published by a batch handler are children of the batch's
event only when the batch holds exactly one event; otherwise they start their own chain,
because a child has one cause.

Publish: any payload (pydantic model, mapping, dataclass, JSON-object bytes/str, None = `{}`)
is wrapped in a new envelope whose lineage comes from the event being processed. Its id: an
explicit `x-event-id` header wins; a child of the event being handled gets
`ids.child_id(parent, topic, ordinal)`, the same on every re-run; any other event a UUIDv7. Event `type`:
an explicit `x-event-type` header, else the payload model's class name, else the destination
topic. An `EventEnvelope` body, or a bytes body sent with an `x-event-id` header, is already
wrapped and goes out as it is. `trace_id` is the W3C trace id of the publish (from the
`traceparent` header FastStream's telemetry injected, else the active span, whose context is
then injected); `parent_trace_id` is the trace id of the causing event, so a chain can be
followed hop to hop even where a trace was broken. Batch publishes share one header set in
Kafka, so only the fields common to every envelope are mirrored (never `x-event-id`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Annotated, Any

import pydantic_core
from faststream import BaseMiddleware, Depends
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel

from alpha_streaming import _lineage as lineage
from alpha_streaming import _serialization as serialization
from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._errors import ConfigError, EnvelopeError
from alpha_streaming._topics import BrokerContext, broker_from_topic
from middlewares._state import handled, handling, state_of

if TYPE_CHECKING:
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.message import StreamMessage
    from faststream.response import PublishCommand

__all__ = (
    "CurrentBrokerContext",
    "CurrentEnvelope",
    "CurrentEnvelopes",
    "EnvelopeMiddleware",
    "group_id_of",
)


async def _current_envelope() -> EventEnvelope:
    envelope = handled().envelope
    if envelope is None:
        raise EnvelopeError(
            "CurrentEnvelope is for single-message subscribers; a batch takes CurrentEnvelopes"
        )
    return envelope


async def _current_envelopes() -> tuple[EventEnvelope, ...]:
    return handled().batch_envelopes


async def _current_broker_context() -> BrokerContext:
    where = handled().broker_context
    assert where is not None  # `handled` checked it
    return where


# Dependencies on async functions: resolved in place, with no task group or worker thread per
# message (a `Context(...)` field costs either, `_state.handling`).
CurrentEnvelope = Annotated[EventEnvelope, Depends(_current_envelope, cast=False)]
"""The envelope of the event being handled (single-message subscribers)."""
CurrentEnvelopes = Annotated[tuple[EventEnvelope, ...], Depends(_current_envelopes, cast=False)]
"""The envelopes of a batch, aligned with the list of payloads the handler receives."""
CurrentBrokerContext = Annotated[BrokerContext, Depends(_current_broker_context, cast=False)]
"""Where the event came from: broker namespace, topic, partition, offset, consumer group."""

JSON = "application/json"
_TRACE_PROPAGATOR = TraceContextTextMapPropagator()


def group_id_of(context: ContextRepo) -> str | None:
    """The consumer group of the subscriber processing the current message, if it has one."""
    return getattr(context.get_local("handler_"), "group_id", None) or None


async def _decode_payload(msg: StreamMessage[Any]) -> Any:
    """The decoder of an unwrapped message: the payload validated with its envelope."""
    envelope = state_of(msg).envelope
    assert envelope is not None
    return envelope.data


async def _decode_batch(msg: StreamMessage[Any]) -> list[Any]:
    # The payloads of the batch's envelopes, which the dedup middleware may have narrowed to the
    # events not seen before.
    return [envelope.data for envelope in state_of(msg).batch_envelopes]


class EnvelopeMiddleware:
    """Wraps published payloads in an `EventEnvelope`; unwraps and validates consumed ones."""

    __slots__ = ("source",)

    def __init__(self, *, source: str) -> None:
        if not source:
            raise ConfigError("EnvelopeMiddleware(source=...) needs the service name, got an empty string")
        self.source = source

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[Any, Any]:
        return _EnvelopeRuntime(msg, context=context, source=self.source)

    def __repr__(self) -> str:
        return f"EnvelopeMiddleware(source={self.source!r})"


class _EnvelopeRuntime(BaseMiddleware[Any, Any]):
    __slots__ = ("_run", "_source")

    def __init__(self, msg: Any, /, *, context: ContextRepo, source: str) -> None:
        super().__init__(msg, context=context)
        self._source = source
        # A publish FastStream makes after `consume_scope` returned (a reply) goes through this
        # same object: the consumed event's run stays its parent and keeps counting child ids.
        self._run: lineage.HandlerRun | None = None

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        if isinstance(raw, tuple | list):
            return await self._consume_batch(call_next, msg, raw)
        envelope = EventEnvelope.from_bytes(raw.value or b"")
        where = BrokerContext.of(raw.topic, raw.partition, raw.offset, group_id_of(self.context))
        state = state_of(msg)
        state.envelope = envelope
        state.broker_context = where
        msg.set_decoder(_decode_payload)
        msg.clear_cache()  # a retry hands out this attempt's payload, not the previous one's
        with handling(state), lineage.processing_event(envelope) as run:
            self._run = run
            return await call_next(msg)

    async def _consume_batch(
        self, call_next: AsyncFuncAny, msg: StreamMessage[Any], records: Sequence[Any]
    ) -> Any:
        envelopes = []
        for record in records:
            try:
                envelopes.append(EventEnvelope.from_bytes(record.value or b""))
            except EnvelopeError as exc:
                raise EnvelopeError(
                    f"{exc} (record {record.topic}[{record.partition}]@{record.offset} of a batch)"
                ) from exc
        first = records[0]
        where = BrokerContext.of(first.topic, first.partition, first.offset, group_id_of(self.context))
        batch = tuple(envelopes)
        state = state_of(msg)
        state.batch_envelopes = batch
        state.envelope = batch[0] if len(batch) == 1 else None
        state.broker_context = where
        msg.set_decoder(_decode_batch)
        msg.clear_cache()
        with ExitStack() as stack:
            stack.enter_context(handling(state))
            if state.envelope is not None:
                self._run = stack.enter_context(lineage.processing_event(state.envelope))
            return await call_next(msg)

    async def publish_scope(
        self, call_next: Callable[[PublishCommand], Awaitable[Any]], cmd: PublishCommand
    ) -> Any:
        bodies = cmd.batch_bodies
        if not bodies:
            bodies = (None,)
        headers = cmd.headers
        if EnvelopeHeaders.ID in headers and all(isinstance(body, bytes | bytearray) for body in bodies):
            # Bytes sent with an event id are envelopes forwarded as they are (a relay, a replay).
            return await call_next(cmd)
        trace_id = _trace_id(headers)
        run = lineage.current_run() or self._run
        destination = cmd.destination
        explicit_type = headers.get(EnvelopeHeaders.TYPE)
        explicit_id = headers.get(EnvelopeHeaders.ID) if len(bodies) == 1 else None
        key_for = getattr(cmd, "key_for", None)
        envelopes = [
            body
            if isinstance(body, EventEnvelope)
            else _wrap(
                body,
                id_=explicit_id or (run.next_child_id(destination) if run is not None else None),
                type_=explicit_type,
                destination=destination,
                source=self._source,
                key=key_for(index) if key_for is not None else getattr(cmd, "key", None),
                parent=run.event if run is not None else None,
                trace_id=trace_id,
            )
            for index, body in enumerate(bodies)
        ]
        # Assign the fields directly: the `batch_bodies` setter realigns per-message keys by
        # looking the new bodies up among the old ones, which fails for rewritten bodies.
        cmd.body = envelopes[0].to_bytes()
        if len(envelopes) > 1:
            cmd.extra_bodies = tuple(envelope.to_bytes() for envelope in envelopes[1:])  # type: ignore[attr-defined]
        mirrored = _common_headers(envelopes)
        cmd.headers = {**headers, **mirrored, "content-type": JSON}
        if correlation_id := mirrored.get(EnvelopeHeaders.CORRELATION_ID):
            cmd.correlation_id = correlation_id
        return await call_next(cmd)


def _wrap(
    body: Any,
    *,
    id_: str | None,
    type_: str | None,
    destination: str,
    source: str,
    key: Any,
    parent: EventEnvelope | None,
    trace_id: str | None,
) -> EventEnvelope:
    return EventEnvelope.create(
        id=id_,
        type=type_ or (type(body).__name__ if isinstance(body, BaseModel) else destination),
        data=_payload(body),
        source=source,
        key=_key_text(key),
        broker=broker_from_topic(destination),
        parent=parent,
        trace_id=trace_id,
        parent_trace_id=parent.trace_id if parent is not None else None,
    )


def _payload(body: Any) -> BaseModel | Mapping[str, Any]:
    if body is None:
        return {}
    if isinstance(body, BaseModel | Mapping):
        return body
    if isinstance(body, bytes | bytearray | str):
        try:
            value = serialization.loads(body if isinstance(body, str) else bytes(body))
        except ValueError as exc:
            raise TypeError(
                f"EnvelopeMiddleware can only wrap a JSON object; the body is not JSON: {exc}"
            ) from exc
    elif dataclasses.is_dataclass(body) and not isinstance(body, type):
        value = pydantic_core.to_jsonable_python(body)
    else:
        value = body
    if not isinstance(value, dict):
        raise TypeError(
            "EnvelopeMiddleware can only wrap a JSON object (pydantic model, mapping, dataclass or "
            f"JSON-object bytes) into `data`; got {type(value).__name__}"
        )
    return value


def _key_text(key: Any) -> str | None:
    if key is None:
        return None
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", errors="replace")
    return str(key)


def _trace_id(headers: dict[str, str]) -> str | None:
    if traceparent := headers.get(EnvelopeHeaders.TRACEPARENT):
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return parts[1]
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    # No telemetry middleware injected it: carry the active trace ourselves.
    _TRACE_PROPAGATOR.inject(headers)
    return format(span_context.trace_id, "032x")


def _common_headers(envelopes: Sequence[EventEnvelope]) -> dict[str, str]:
    first = envelopes[0].headers()
    if len(envelopes) == 1:
        return first
    others = [envelope.headers() for envelope in envelopes[1:]]
    return {
        name: value
        for name, value in first.items()
        if name != EnvelopeHeaders.ID and all(other.get(name) == value for other in others)
    }
