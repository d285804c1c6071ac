"""`EnvelopeAsyncAPI`: an AsyncAPI 3.0 document that describes what the enhanced tier puts on the wire.

FastStream documents a handler's parameter (the bare payload model, or nothing for a legacy
`message: dict`), while the records carry an `EventEnvelope` with that payload under `data`, the
`x-event-*` headers, and a `<topic>.dlq` twin for every consumed topic. This factory rewrites
FastStream's document so that both directions show the envelope with `data` typed as the payload
model, every message lists its headers, the correlation id is located in `x-correlation-id`
(FastStream's own `correlation_id` header is another id), and each consumed topic's `.dlq`
channel appears with its error headers. `faststream docs gen module:app` prints the result.
"""

from __future__ import annotations

import copy
import importlib
import json
from typing import Any

from faststream.specification import AsyncAPI
from faststream.specification.base import Specification

from alpha_streaming._dlq import DlqHeaders
from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._topics import dlq_topic

__all__ = ("EnvelopeAsyncAPI", "envelope_document")

_SCHEMAS = "#/components/schemas/"
ENVELOPE = EventEnvelope.__name__

_ENVELOPE_HEADERS: dict[str, str] = {
    EnvelopeHeaders.ID: "The envelope's id (UUIDv7 for a root event, UUIDv5 for a child): the dedup key.",
    EnvelopeHeaders.TYPE: "The envelope's `type`.",
    EnvelopeHeaders.SOURCE: "The service that published the event.",
    EnvelopeHeaders.CORRELATION_ID: "The envelope's `correlation_id`: the id of the chain's root event.",
    EnvelopeHeaders.CAUSATION_ID: "The id of the event whose handler published this one (children only).",
    EnvelopeHeaders.BROKER: "The broker namespace (`paper`, `zerodha`, `shared`, ...).",
    EnvelopeHeaders.VERSION: "The envelope format version.",
    EnvelopeHeaders.TRACEPARENT: "W3C trace context of the publishing span.",
    "correlation_id": "FastStream's own correlation id of the record (not the envelope's).",
    "content-type": "`application/json`.",
}
_DLQ_HEADERS: dict[str, str] = {
    DlqHeaders.ORIGINAL_TOPIC: "The topic the record was consumed from.",
    DlqHeaders.ORIGINAL_PARTITION: "Its partition (4-byte big-endian int).",
    DlqHeaders.ORIGINAL_OFFSET: "Its offset (8-byte big-endian long).",
    DlqHeaders.ORIGINAL_TIMESTAMP: "Its timestamp, epoch ms (8-byte big-endian long).",
    DlqHeaders.ORIGINAL_TIMESTAMP_TYPE: "Its timestamp type (CreateTime or LogAppendTime).",
    DlqHeaders.ORIGINAL_CONSUMER_GROUP: "The consumer group that failed it.",
    DlqHeaders.EXCEPTION_FQCN: "The error's fully qualified class name.",
    DlqHeaders.EXCEPTION_MESSAGE: "The error's message.",
    DlqHeaders.EXCEPTION_STACKTRACE: "The error's stack trace.",
    DlqHeaders.ATTEMPTS: "Processing attempts made before dead-lettering.",
    DlqHeaders.SERVICE: "The service that dead-lettered it.",
    DlqHeaders.FAILED_AT: "When it was dead-lettered (ISO 8601, UTC).",
}


def _headers(described: dict[str, str]) -> dict[str, Any]:
    properties = {name: {"type": "string", "description": text} for name, text in described.items()}
    return {"type": "object", "properties": properties}


class EnvelopeAsyncAPI(AsyncAPI):
    """`faststream.specification.AsyncAPI` whose 3.0 document describes the enveloped wire format.

    `FastStream(broker, specification=EnvelopeAsyncAPI(title="position-keeper"))`; declare each
    publisher with its payload model (`broker.publisher(topic, schema=PositionUpdated)`).
    """

    def to_specification(self) -> Specification:
        specification = super().to_specification()
        if not self.schema_version.startswith("3."):
            return specification
        return _Document(specification.title, envelope_document(specification.to_jsonable()))


class _Document:
    """A finished document, with the methods FastStream's `docs gen` and `docs serve` call."""

    def __init__(self, title: str, document: dict[str, Any]) -> None:
        self.title = title
        self._document = document

    def to_jsonable(self) -> dict[str, Any]:
        return copy.deepcopy(self._document)

    def to_json(self) -> str:
        return json.dumps(self._document)

    def to_yaml(self) -> str:
        # Optional, as in FastStream (`pip install pyyaml`); an ImportError makes its CLI say so.
        yaml = importlib.import_module("yaml")
        dumped: str = yaml.dump(self._document, sort_keys=False, allow_unicode=True)
        return dumped


def envelope_document(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of FastStream's AsyncAPI 3.0 `document` rewritten for the enveloped wire format."""
    doc = copy.deepcopy(document)
    components = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    messages: dict[str, Any] = components.setdefault("messages", {})
    schemas.setdefault(ENVELOPE, _envelope_schema())
    channels: dict[str, Any] = doc.setdefault("channels", {})
    operations: dict[str, Any] = doc.setdefault("operations", {})
    dead_letters: dict[str, dict[str, Any]] = {}
    done: set[str] = set()
    for operation in list(operations.values()):
        channel = channels[_last(operation["channel"]["$ref"])]
        for ref in channel.get("messages", {}).values():
            message = messages[_last(ref["$ref"])]
            if _last(ref["$ref"]) not in done:
                done.add(_last(ref["$ref"]))
                message["payload"] = _enveloped(schemas, message.get("payload"))
            message["headers"] = _headers(_ENVELOPE_HEADERS)
            message["correlationId"] = {
                "description": "The envelope's correlation id, mirrored in a header.",
                "location": f"$message.header#/{EnvelopeHeaders.CORRELATION_ID}",
            }
            if operation.get("action") == "receive":
                dead_letters.setdefault(
                    channel["address"], {"channel": channel, "payload": message["payload"]}
                )
    for address, source in dead_letters.items():
        _add_dead_letter_channel(doc, address, source["channel"], source["payload"])
    return doc


def _add_dead_letter_channel(doc: dict[str, Any], address: str, source: dict[str, Any], payload: Any) -> None:
    target = dlq_topic(address)
    name = f"{target}:DeadLetter"
    doc["components"]["messages"][name] = {
        "title": name,
        "summary": f"A record of {address} that could not be processed.",
        "description": "The original key, value bytes (untouched: they may not be a valid envelope) "
        "and headers, plus the error headers. `alpha-streaming dlq replay` puts it back.",
        "payload": payload,
        "headers": _headers({**_ENVELOPE_HEADERS, **_DLQ_HEADERS}),
    }
    channel: dict[str, Any] = {
        "address": target,
        "description": f"Dead letters of {address}.",
        "messages": {"DeadLetter": {"$ref": f"#/components/messages/{name}"}},
        "bindings": {"kafka": {"topic": target, "bindingVersion": "0.4.0"}},
    }
    if "servers" in source:
        channel["servers"] = source["servers"]
    doc["channels"][name] = channel
    doc["operations"][name] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{name}"},
        "messages": [{"$ref": f"#/channels/{name}/messages/DeadLetter"}],
    }


def _enveloped(schemas: dict[str, Any], payload: Any) -> dict[str, Any]:
    """The envelope schema whose `data` is `payload` (a `$ref` gets a named `<Model>Envelope`)."""
    ref = payload.get("$ref") if isinstance(payload, dict) else None
    # A publisher declared with schema=EventEnvelope, or a handler without a payload parameter
    # (FastStream's null `EmptyPayload`, e.g. the builder's legacy handlers): `data` is any object.
    if ref == f"{_SCHEMAS}{ENVELOPE}" or (ref and schemas.get(_last(ref), {}).get("type") == "null"):
        return {"$ref": f"{_SCHEMAS}{ENVELOPE}"}
    data = payload if isinstance(payload, dict) and payload else {"type": "object"}
    schema: dict[str, Any] = copy.deepcopy(schemas[ENVELOPE])
    schema["properties"]["data"] = data
    if ref is None:
        schema["title"] = ENVELOPE
        return schema
    name = f"{_last(ref)}Envelope"
    schema["title"] = name
    schemas.setdefault(name, schema)
    return {"$ref": f"{_SCHEMAS}{name}"}


def _envelope_schema() -> dict[str, Any]:
    schema: dict[str, Any] = EventEnvelope.model_json_schema(ref_template=_SCHEMAS + "{model}")
    return schema


def _last(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]
