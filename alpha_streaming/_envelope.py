"""`EventEnvelope`: the wire format of every event in the enhanced tier (JSON body, UTF-8).

An envelope whose `version` is above `ENVELOPE_VERSION` is read with the fields this code knows
and processed (a producer upgraded first must not stall its consumers), with one warning per
version and process; if its known fields no longer validate, it is an invalid envelope and is
dead-lettered like one, to be replayed once the consumer is upgraded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from alpha_streaming import _serialization as serialization
from alpha_streaming._errors import EnvelopeError
from alpha_streaming._ids import uuid7

__all__ = ("ENVELOPE_VERSION", "EnvelopeHeaders", "EventEnvelope")

ENVELOPE_VERSION = 1

log = logging.getLogger(__name__)
_newer_versions_seen: set[int] = set()


class EnvelopeHeaders:
    """Kafka header names that mirror envelope fields, so routing and dedup need not parse bodies."""

    ID = "x-event-id"
    TYPE = "x-event-type"
    SOURCE = "x-event-source"
    CORRELATION_ID = "x-correlation-id"
    CAUSATION_ID = "x-causation-id"
    BROKER = "x-broker"
    VERSION = "x-envelope-version"
    TRACEPARENT = "traceparent"


class EventEnvelope(BaseModel):
    """One event: identity, lineage (correlation/causation), routing and the payload in `data`."""

    # Unknown fields are ignored so a newer producer's envelope still reads here.
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(default_factory=lambda: str(uuid7()))
    type: str = Field(min_length=1)
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = Field(min_length=1)
    key: str | None = None
    broker: str = "shared"
    correlation_id: str = ""
    causation_id: str | None = None
    trace_id: str | None = None
    parent_trace_id: str | None = None
    version: int = ENVELOPE_VERSION
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ts")
    @classmethod
    def _ts_is_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("ts must carry a timezone (UTC); got a naive datetime")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _root_correlates_to_itself(self) -> Self:
        if not self.correlation_id:
            # A root event starts its own correlation chain.
            object.__setattr__(self, "correlation_id", self.id)
        if self.version > ENVELOPE_VERSION and self.version not in _newer_versions_seen:
            _newer_versions_seen.add(self.version)
            log.warning(
                "envelope version %d from %s is newer than this code's %d; processing it with the "
                "fields this version knows (upgrade this consumer)",
                self.version,
                self.source,
                ENVELOPE_VERSION,
            )
        return self

    @classmethod
    def create(
        cls,
        *,
        type: str,
        data: BaseModel | Mapping[str, Any],
        source: str,
        key: str | None = None,
        broker: str = "shared",
        parent: EventEnvelope | None = None,
        trace_id: str | None = None,
        parent_trace_id: str | None = None,
        id: str | None = None,
    ) -> EventEnvelope:
        """Build a new event; with `parent`, it joins the parent's correlation chain as its child.

        `id` defaults to a new UUIDv7; the enhanced tier passes a child's deterministic id.
        """
        # Stored in JSON form (Decimal -> "1.10"), so an envelope equals itself after a round trip;
        # the payload model turns the values back into Decimal/datetime on the consuming side.
        payload = pydantic_core.to_jsonable_python(data, by_alias=True)
        identity = {"id": id} if id is not None else {}
        return cls(
            **identity,
            type=type,
            source=source,
            key=key,
            broker=broker,
            correlation_id=parent.correlation_id if parent else "",
            causation_id=parent.id if parent else None,
            trace_id=trace_id,
            parent_trace_id=parent_trace_id,
            data=payload,
        )

    @property
    def is_root(self) -> bool:
        return self.causation_id is None

    def headers(self) -> dict[str, str]:
        """The identity and routing fields mirrored as Kafka headers."""
        headers = {
            EnvelopeHeaders.ID: self.id,
            EnvelopeHeaders.TYPE: self.type,
            EnvelopeHeaders.SOURCE: self.source,
            EnvelopeHeaders.CORRELATION_ID: self.correlation_id,
            EnvelopeHeaders.BROKER: self.broker,
            EnvelopeHeaders.VERSION: str(self.version),
        }
        if self.causation_id is not None:
            headers[EnvelopeHeaders.CAUSATION_ID] = self.causation_id
        return headers

    def to_bytes(self) -> bytes:
        return serialization.dumps(self)

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> EventEnvelope:
        """Parse and validate wire bytes; any defect raises `EnvelopeError` naming the field."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<body>'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise EnvelopeError(f"invalid EventEnvelope: {problems}") from exc
