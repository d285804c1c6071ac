"""The demo's verdict: a clean run passes; a lost or doubled event fails it, with the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from itertools import count

import pytest
from aiokafka import TopicPartition

from alpha_streaming import EventEnvelope
from alpha_streaming._dlq import DeadLetter, DlqHeaders
from examples.trading_pipeline.models import EventType, OrderFilled, Side, Signal, Tick
from examples.trading_pipeline.report import RUN_HEADER, GroupPosition, Metric, RunData, analyse, percentile
from examples.trading_pipeline.wire import WireRecord

RUN = "run-1"
_offsets: Iterator[int] = count()


def record(
    topic: str, envelope: EventEnvelope | None, *, value: bytes | None = None, headers=()
) -> WireRecord:
    return WireRecord(
        topic=topic,
        partition=0,
        offset=next(_offsets),
        timestamp_ms=int(datetime.now(UTC).timestamp() * 1000),
        key=envelope.key.encode() if envelope and envelope.key else None,
        value=envelope.to_bytes() if envelope else value,
        headers=tuple(headers),
    )


def child(
    parent: EventEnvelope, type_: str, data: object, source: str, key: str | None = None
) -> EventEnvelope:
    return EventEnvelope.create(type=type_, data=data, source=source, key=key, parent=parent)  # type: ignore[arg-type]


def poison_letter() -> WireRecord:
    letter = DeadLetter(
        original_topic="market.ticks",
        original_partition=0,
        original_offset=7,
        original_timestamp_ms=0,
        consumer_group="g",
        exception_fqcn="alpha_streaming._errors.EnvelopeError",
        exception_message="invalid EventEnvelope",
        stacktrace="",
        attempts=1,
        service="strategy-runner",
        failed_at=datetime.now(UTC),
    )
    return record(
        "market.ticks.dlq", None, value=b"\x00junk", headers=[(RUN_HEADER, RUN.encode()), *letter.headers()]
    )


def clean_run() -> list[WireRecord]:
    tick = EventEnvelope.create(
        type=EventType.TICK,
        data=Tick(token="INFY", price=Decimal("1500"), seq=0, session=RUN),
        source="market-feed",
        key="INFY",
    )
    paper = Signal(
        strategy="momentum", token="INFY", side=Side.BUY, quantity=Decimal(10), limit_price=Decimal(1500)
    )
    zerodha = paper.model_copy(update={"strategy": "mean_reversion"})
    raw_p = child(tick, EventType.SIGNAL, paper, "strategy-runner", paper.key)
    raw_z = child(tick, EventType.SIGNAL, zerodha, "strategy-runner", zerodha.key)
    valid_p = child(raw_p, EventType.SIGNAL_VALIDATED, paper, "risk-manager", paper.key)
    valid_z = child(raw_z, EventType.SIGNAL_VALIDATED, zerodha, "risk-manager", zerodha.key)
    fills = [
        child(
            valid,
            EventType.ORDER_FILLED,
            OrderFilled(
                order_id="o",
                strategy=s.strategy,
                token="INFY",
                side=Side.BUY,
                quantity=Decimal(10),
                fill_price=Decimal(1500),
                venue="v",
                filled_at=datetime.now(UTC),
            ),
            f"{ns}-engine",
            s.key,
        )
        for valid, s, ns in ((valid_p, paper, "paper"), (valid_z, zerodha, "zerodha"))
    ]
    return [
        record("market.ticks", tick),
        record("market.ticks", tick),  # an injected duplicate
        record("paper.signals.raw", raw_p),
        record("zerodha.signals.raw", raw_z),
        record("paper.signals.validated", valid_p),
        record("zerodha.signals.validated", valid_z),
        record("paper.orders.filled", fills[0]),
        record("zerodha.orders.filled", fills[1]),
        poison_letter(),
    ]


def data(records: list[WireRecord], **overrides: object) -> RunData:
    metrics = [
        Metric("alpha.messages", {"service": "strategy-runner", "outcome": "deduplicated"}, 1),
        Metric("alpha.messages.retried", {"service": "zerodha-engine"}, 2),
    ]
    groups = [GroupPosition("g", TopicPartition("market.ticks", 0), 3, 3)]
    fields: dict[str, object] = {
        "run_id": RUN,
        "records": records,
        "metrics": metrics,
        "groups": groups,
        "strategies": 2,
    }
    fields.update(overrides)
    return RunData(**fields)  # type: ignore[arg-type]


def test_a_clean_run_passes_and_reports_each_section() -> None:
    report = analyse(data(clean_run()))
    assert report.failures == []
    text = report.text()
    assert "VERDICT: OK" in text
    assert "Duplicates: 1 duplicate tick copies on the wire; 1 suppressed by dedup" in text
    assert "market.ticks.dlq@" in text and "EnvelopeError after 1 attempt(s)" in text
    assert "One trace:" in text and "zerodha-engine" in text


def test_a_fill_produced_twice_fails_the_run() -> None:
    records = clean_run()
    fill = next(r for r in records if r.topic == "paper.orders.filled")
    assert fill.envelope is not None
    again = fill.envelope.model_copy(update={"id": "another-id"})  # the engine ran twice
    report = analyse(data([*records, record("paper.orders.filled", again)]))
    assert not report.ok
    assert any("processed twice" in reason for reason in report.failures)
    assert "VERDICT: FAILED" in report.text()


def test_a_missing_fill_fails_the_run() -> None:
    records = [r for r in clean_run() if r.topic != "zerodha.orders.filled"]
    report = analyse(data(records))
    assert any("filled on [none]" in reason for reason in report.failures)


def test_a_duplicate_that_was_not_suppressed_fails_the_run() -> None:
    report = analyse(data(clean_run(), metrics=[Metric("alpha.messages.retried", {}, 1)]))
    assert any("only 0 suppressed" in reason for reason in report.failures)


def test_uncommitted_records_and_other_runs_records() -> None:
    other = EventEnvelope.create(
        type=EventType.TICK,
        data=Tick(token="TCS", price=Decimal(1), seq=0, session="another-run"),
        source="market-feed",
    )
    lagging = [GroupPosition("g", TopicPartition("market.ticks", 1), 1, 4)]
    report = analyse(data([*clean_run(), record("market.ticks", other)], groups=lagging))
    # The other run's tick is ignored (it has no signals, yet nothing is reported lost) ...
    assert not any(other.id in reason for reason in report.failures)
    # ... while records left uncommitted are.
    assert report.failures == ["group g left 3 record(s) uncommitted on market.ticks[1]"]


def test_a_replayed_record_is_not_a_duplicate() -> None:
    records = clean_run()
    raw = next(r for r in records if r.topic == "paper.signals.raw")
    replay = dataclasses.replace(raw, offset=99, headers=((DlqHeaders.REPLAY_COUNT, b"1"),))
    report = analyse(data([*records, replay], replayed=1))
    assert report.ok, report.failures
    assert "replayed to their source topics: 1 (replay tool reported 1)" in report.text()


@pytest.mark.parametrize(("q", "expected"), [(50, 2.0), (99, 4.0), (100, 4.0), (1, 1.0)])
def test_percentile_is_nearest_rank(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == expected
