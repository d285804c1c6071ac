"""`configure_logging`: time, level, logger and the message on every line; JSON; repeats held back."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from aiokafka import ConsumerRecord

from alpha_streaming import LogSettings, configure_logging
from alpha_streaming._envelope import EnvelopeHeaders, EventEnvelope
from alpha_streaming._lineage import processing_event
from alpha_streaming._logging import (
    FASTSTREAM_LOGGERS,
    NOISY_LOGGERS,
    PROJECT_LOGGERS,
    RepeatFilter,
    bind_record,
    unbind_record,
)

LOGGERS = (*PROJECT_LOGGERS, *NOISY_LOGGERS, *FASTSTREAM_LOGGERS)
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (\w+) +([\w.]+): (.*)$")


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    saved = {n: (list(lg.handlers), lg.propagate, lg.level) for n in LOGGERS if (lg := logging.getLogger(n))}
    yield
    for name, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level


def record(
    topic: str = "paper.orders.filled", *, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord:
    return ConsumerRecord(topic, 2, 41, 0, 0, b"k", b"v", None, 1, 1, headers or [])


@pytest.mark.usefixtures("restore_loggers")
def test_a_line_about_a_message_names_it() -> None:
    out = io.StringIO()
    configure_logging(LogSettings(configure=True), stream=out)
    log = logging.getLogger("middlewares._error_routing")
    log.info("outside any message")
    token = bind_record(
        record(headers=[(EnvelopeHeaders.ID, b"e-1"), (EnvelopeHeaders.CORRELATION_ID, b"c-1")])
    )
    try:
        log.warning("Boom on it; retrying")
    finally:
        unbind_record(token)
    first, second = out.getvalue().splitlines()
    assert LINE.match(first).groups() == ("INFO", "middlewares._error_routing", "outside any message")  # type: ignore[union-attr]
    level, name, message = LINE.match(second).groups()  # type: ignore[union-attr]
    assert (level, name) == ("WARNING", "middlewares._error_routing")
    assert message == "Boom on it; retrying [paper.orders.filled[2]@41 event=e-1 correlation=c-1]"
    assert "\x1b[" not in out.getvalue()


@pytest.mark.usefixtures("restore_loggers")
def test_json_format_is_one_object_a_line_and_the_validated_envelope_wins() -> None:
    out = io.StringIO()
    configure_logging(LogSettings(configure=True, format="json"), stream=out)
    envelope = EventEnvelope.create(type="fill", data={}, source="up")
    token = bind_record(record())
    try:
        with processing_event(envelope):
            logging.getLogger("alpha_streaming.x").error("dead-lettered")
    finally:
        unbind_record(token)
    entry = json.loads(out.getvalue())
    assert entry["level"] == "ERROR" and entry["logger"] == "alpha_streaming.x"
    assert entry["message"] == "dead-lettered" and entry["time"].endswith("+00:00")
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("paper.orders.filled", 2, 41)
    assert (entry["event_id"], entry["correlation_id"]) == (envelope.id, envelope.correlation_id)


@pytest.mark.usefixtures("restore_loggers")
def test_faststream_lines_lose_their_colour_codes_and_configure_is_idempotent() -> None:
    out = io.StringIO()
    faststream = logging.getLogger("faststream")
    own = logging.StreamHandler(out)
    faststream.addHandler(own)
    configure_logging(LogSettings(configure=True), stream=out)
    configure_logging(LogSettings(configure=True), stream=out)
    faststream.warning("started")
    assert out.getvalue().count("started") == 1
    assert "\x1b[" not in out.getvalue()
    assert len([h for h in logging.getLogger("alpha_streaming").handlers if h.stream is out]) == 1  # type: ignore[attr-defined]


@pytest.mark.usefixtures("restore_loggers")
def test_configure_false_leaves_logging_alone() -> None:
    before = list(logging.getLogger("alpha_streaming").handlers)
    configure_logging(LogSettings(configure=False))
    assert logging.getLogger("alpha_streaming").handlers == before


def test_repeated_connection_errors_are_held_back_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("alpha_streaming._logging.time.monotonic", lambda: now[0])
    repeat = RepeatFilter(interval_s=30)

    def emit(
        msg: str = "Unable connect to node with id %s: %s", level: int = logging.ERROR
    ) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, (3, "refused"), None)

    passed = []
    for second in range(0, 61):
        now[0] = float(second)
        for _ in range(5):  # five retries a second, as during an outage
            if repeat.filter(line := emit()):
                passed.append(line.getMessage())
    assert len(passed) == 3  # at 0 s, 30 s and 60 s
    assert passed[1].endswith("(149 more like it held back since the last one)")
    assert repeat.filter(emit("another problem"))
    assert all(repeat.filter(emit(level=logging.INFO)) for _ in range(3))  # only warnings and errors
