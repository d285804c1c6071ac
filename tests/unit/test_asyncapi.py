"""`EnvelopeAsyncAPI`: the document describes the wire — envelopes, headers, `.dlq` channels."""

from __future__ import annotations

import json
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from alpha_streaming import (
    DedupSettings,
    EnvelopeAsyncAPI,
    EventEnvelope,
    Settings,
    StreamServiceBuilder,
)
from alpha_streaming._dlq import DlqHeaders

ENVELOPE_REF = {"$ref": "#/components/schemas/EventEnvelope"}


class Fill(BaseModel):
    qty: int


class Position(BaseModel):
    qty: int


def decorator_document() -> dict[str, Any]:
    broker = KafkaBroker()

    @broker.subscriber("paper.orders.filled", group_id="g")
    @broker.publisher("paper.positions.updated", schema=Position)
    async def on_fill(fill: Fill) -> Position:
        return Position(qty=fill.qty)

    app = FastStream(broker, specification=EnvelopeAsyncAPI(title="keeper"))
    document: dict[str, Any] = json.loads(app.schema.to_specification().to_json())
    return document


def message_of(document: dict[str, Any], channel: str) -> dict[str, Any]:
    (ref,) = document["channels"][channel]["messages"].values()
    message: dict[str, Any] = document["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
    return message


def test_both_directions_carry_the_envelope_with_typed_data() -> None:
    document = decorator_document()
    schemas = document["components"]["schemas"]
    consumed = message_of(document, "paper.orders.filled:OnFill")
    produced = message_of(document, "paper.positions.updated:Publisher")
    assert consumed["payload"] == {"$ref": "#/components/schemas/FillEnvelope"}
    assert produced["payload"] == {"$ref": "#/components/schemas/PositionEnvelope"}
    fill_envelope = schemas["FillEnvelope"]
    assert fill_envelope["properties"]["data"] == {"$ref": "#/components/schemas/Fill"}
    assert set(EventEnvelope.model_fields) <= set(fill_envelope["properties"])
    assert schemas["PositionEnvelope"]["properties"]["data"] == {"$ref": "#/components/schemas/Position"}
    for message in (consumed, produced):
        assert message["correlationId"]["location"] == "$message.header#/x-correlation-id"
        headers = message["headers"]["properties"]
        assert {"x-event-id", "x-event-type", "x-correlation-id", "x-causation-id", "traceparent"} <= set(
            headers
        )


def test_each_consumed_topic_has_its_dlq_channel_with_the_error_headers() -> None:
    document = decorator_document()
    dlq = document["channels"]["paper.orders.filled.dlq:DeadLetter"]
    assert dlq["address"] == "paper.orders.filled.dlq"
    assert document["operations"]["paper.orders.filled.dlq:DeadLetter"]["action"] == "send"
    message = message_of(document, "paper.orders.filled.dlq:DeadLetter")
    assert set(message["headers"]["properties"]) >= DlqHeaders.ALL
    assert message["payload"] == {"$ref": "#/components/schemas/FillEnvelope"}
    assert not any(c.startswith("paper.positions.updated.dlq") for c in document["channels"])


async def legacy(message: dict[str, Any], topic: str) -> None:
    return None


def builder_document() -> dict[str, Any]:
    service = (
        StreamServiceBuilder("gate", settings=Settings(dedup=DedupSettings(enabled=False)))
        .add_consumer_handler(topics=["paper.signals.raw"], group_id="g", handler_func=legacy)
        .add_producer(topics=["paper.signals.validated"])
        .build()
    )
    document: dict[str, Any] = json.loads(service.app.schema.to_specification().to_json())
    return document


def test_the_builders_services_get_the_same_description() -> None:
    document = builder_document()
    # A legacy handler receives the whole envelope as a dict: `data` is any object.
    assert message_of(document, "paper.signals.raw:Legacy")["payload"] == ENVELOPE_REF
    assert message_of(document, "paper.signals.validated:gate")["payload"] == ENVELOPE_REF
    assert "paper.signals.raw.dlq:DeadLetter" in document["channels"]
    assert document["components"]["schemas"]["EventEnvelope"]["properties"]["data"]["type"] == "object"
