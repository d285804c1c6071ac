"""Log lines an operator can use: time, level, logger, and which message a line is about.

`configure_logging()` gives the project's loggers (`alpha_streaming`, `middlewares`), aiokafka's
and FastStream's one format: text without colour codes (they garble files and log collectors)
or JSON (one object a line). A line written while a message is processed carries
`topic[partition]@offset`, the event id and the correlation id, read from the record the
enhanced tier bound with `bind_record` (only when a line is written: nothing per message).
aiokafka repeats a connection error every retry during an outage; `RepeatFilter` lets the first
through and then one summary per interval.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any

from alpha_streaming._envelope import EnvelopeHeaders
from alpha_streaming._lineage import current_event
from alpha_streaming._settings import LogSettings

__all__ = (
    "OperatorFormatter",
    "RepeatFilter",
    "bind_record",
    "configure_logging",
    "message_fields",
    "unbind_record",
)

# The loggers this module configures; FastStream's access logger writes one line per message.
PROJECT_LOGGERS = ("alpha_streaming", "middlewares")
NOISY_LOGGERS = ("aiokafka",)
FASTSTREAM_LOGGERS = ("faststream", "faststream.access.kafka")
REPEAT_INTERVAL_S = 30.0

_record: ContextVar[Any] = ContextVar("alpha_log_record", default=None)


def bind_record(record: Any) -> Token[Any]:
    """Make `record` (an aiokafka ConsumerRecord, or a batch) what this task's log lines are about."""
    return _record.set(record)


def unbind_record(token: Token[Any] | None) -> None:
    """Undo `bind_record` (None: nothing was bound, e.g. a publish)."""
    if token is not None:
        _record.reset(token)


def message_fields() -> dict[str, Any]:
    """topic, partition, offset, event_id, correlation_id of the message being processed, if any."""
    raw = _record.get()
    first = raw[0] if isinstance(raw, list | tuple) and raw else raw
    fields: dict[str, Any] = {}
    if first is not None and hasattr(first, "topic"):
        fields = {"topic": first.topic, "partition": first.partition, "offset": first.offset}
        headers = {k: v for k, v in (getattr(first, "headers", None) or ()) if isinstance(v, bytes)}
        for name, header in (
            ("event_id", EnvelopeHeaders.ID),
            ("correlation_id", EnvelopeHeaders.CORRELATION_ID),
        ):
            if header in headers:
                fields[name] = headers[header].decode("utf-8", "replace")
    event = current_event()
    if event is not None:  # the validated envelope wins over headers (a body without them)
        fields["event_id"], fields["correlation_id"] = event.id, event.correlation_id
    return fields


class OperatorFormatter(logging.Formatter):
    """`<UTC time> <LEVEL> <logger>: <message> [topic[p]@offset event=.. correlation=..]`, or JSON."""

    def __init__(self, *, as_json: bool = False) -> None:
        super().__init__()
        self.as_json = as_json

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        fields = message_fields()
        message = record.getMessage()
        if self.as_json:
            entry: dict[str, Any] = {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": message,
                **fields,
            }
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            return json.dumps(entry, ensure_ascii=False, default=str)
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {message}"
        if fields:
            where = (
                f"{fields['topic']}[{fields['partition']}]@{fields['offset']}" if "topic" in fields else ""
            )
            ids = [
                f"{label}={fields[key]}"
                for key, label in (("event_id", "event"), ("correlation_id", "correlation"))
                if key in fields
            ]
            line += " [" + " ".join(filter(None, [where, *ids])) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RepeatFilter(logging.Filter):
    """Let a repeated line (same logger, level and template) through once per `interval_s`.

    The next one after a quiet interval says how many were held back, so an outage shows as a
    few lines with counts instead of hundreds of identical ones.
    """

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it held back since the last one)"
        return True


_OURS = "_alpha_streaming_handler"


class _StdStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout`/`sys.stderr` is at emit time, never to a replaced stream."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    @property
    def stream(self) -> Any:
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value: Any) -> None:
        """Ignored: the stream is looked up at each write."""


def configure_logging(settings: LogSettings | None = None, *, stream: IO[str] | None = None) -> None:
    """Give the project's, aiokafka's and FastStream's loggers one format; idempotent.

    Does nothing with `settings.configure=False` (`ALPHA_LOG__CONFIGURE=false`), for applications
    that configure logging themselves.
    """
    settings = settings if settings is not None else LogSettings()
    if not settings.configure:
        return
    formatter = OperatorFormatter(as_json=settings.format == "json")
    for name in (*PROJECT_LOGGERS, *NOISY_LOGGERS, *FASTSTREAM_LOGGERS):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
            logger.removeHandler(old)
        if name.startswith("faststream") and logger.handlers:
            # FastStream forces colour codes; its handlers keep their streams, get our format.
            for kept in logger.handlers:
                kept.setFormatter(formatter)
            continue
        logger.addHandler(_handler(name, formatter, stream))
        logger.propagate = False
        if name in PROJECT_LOGGERS:
            logger.setLevel(settings.level)


def _handler(name: str, formatter: logging.Formatter, stream: IO[str] | None) -> logging.Handler:
    # FastStream adds its own (coloured) access handler unless one already writes to sys.stdout.
    handler: logging.Handler = (
        logging.StreamHandler(stream)
        if stream is not None
        else _StdStreamHandler("stdout" if name == "faststream.access.kafka" else "stderr")
    )
    handler.setFormatter(formatter)
    if name in NOISY_LOGGERS:
        handler.addFilter(RepeatFilter())
    setattr(handler, _OURS, True)
    return handler
