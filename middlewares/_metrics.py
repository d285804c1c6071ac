"""`MetricsMiddleware`: OpenTelemetry metrics per outcome, plus FastStream's spans.

It is the outermost middleware of the enhanced stack, so it times the whole processing
(retries and the DLQ write included) and reads the one `Outcome` the inner middlewares
recorded; each message is therefore counted exactly once (a dead-lettered message is not also
a failure). Spans come from FastStream's `KafkaTelemetryMiddleware`, composed inside this one
factory once a tracer provider is configured (given, or set globally with
`trace.set_tracer_provider`): its producer spans inject `traceparent`, so the consumer span
downstream joins the same trace. Without one it is left out: two spans per message that nobody
records cost ~15 % of a single-message consumer. Instrument names: `middlewares/_instruments.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import Status, StatusCode

from alpha_streaming._errors import ConfigError
from alpha_streaming._settings import DEFAULT_LISTEN_HOST
from alpha_streaming._topics import broker_from_topic
from middlewares import _prometheus
from middlewares._instruments import Instruments, Series, Tally, instruments_for
from middlewares._prometheus import MetricSample
from middlewares._state import MessageState, Outcome, state_of

if TYPE_CHECKING:
    from types import TracebackType

    from faststream._internal.basic_types import AsyncFuncAny
    from faststream._internal.context.repository import ContextRepo
    from faststream.kafka import KafkaPublishCommand
    from faststream.message import StreamMessage
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ("MetricSample", "MetricsMiddleware")

log = logging.getLogger(__name__)

UNROUTED = "unrouted"
"""Outcome label for a message that raised without an `Outcome` (no error routing below us)."""
RAW_OUTCOME_ATTRIBUTE = "_alpha_outcome"
"""Where error routing leaves the `Outcome` of a record FastStream could not parse into a message."""


def _records(raw: Any) -> tuple[Any, ...] | list[Any]:
    if raw is None:
        return ()
    return raw if isinstance(raw, list | tuple) else (raw,)


class MetricsMiddleware:
    """Counts outcomes, times processing, tracks in-flight and lag; adds FastStream's spans."""

    def __init__(
        self,
        *,
        service: str,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        prometheus_port: int | None = None,
        prometheus_addr: str = DEFAULT_LISTEN_HOST,
    ) -> None:
        if not service:
            raise ConfigError("MetricsMiddleware(service=...) must name the service, got an empty string")
        if meter_provider is not None and prometheus_port is not None:
            raise ConfigError(
                "MetricsMiddleware: pass either meter_provider or prometheus_port, not both; to "
                "export your own provider to Prometheus, give it a PrometheusMetricReader yourself"
            )
        if prometheus_port is not None and not 0 <= prometheus_port <= 65535:
            raise ConfigError(f"prometheus_port must be 0..65535 (0 = any free port), got {prometheus_port}")
        self.service = service
        self._private: _prometheus.PrivateMeters | None = None
        if meter_provider is None:
            self._private = _prometheus.acquire(prometheus_port, addr=prometheus_addr, service=service)
            meter_provider = self._private.provider
        self.meter_provider: MeterProvider = meter_provider
        self._instruments = instruments_for(meter_provider)
        self._tracer_provider = tracer_provider
        self._telemetry: KafkaTelemetryMiddleware | None = None
        # Attribute dicts per (topic, label): bounded by subscribed topics x outcomes/error classes.
        self._attributes: dict[tuple[str, str, str], dict[str, str]] = {}
        # Keyed by tally too: two tallies may share an attribute set (no varying label).
        self._series: dict[tuple[int, str, str, str], Series] = {}

    @property
    def prometheus_port(self) -> int | None:
        """The port `/metrics` is served on (the real one when 0 was asked for), if any."""
        return self._private.port if self._private is not None else None

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> BaseMiddleware[KafkaPublishCommand, Any]:
        spans = self._telemetry or self._spans()
        telemetry = spans(msg, context=context) if spans is not None else None
        return _MetricsRuntime(msg, context=context, factory=self, telemetry=telemetry)

    def _spans(self) -> KafkaTelemetryMiddleware | None:
        """FastStream's span middleware, made once a tracer provider is given or set globally."""
        if self._tracer_provider is None and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
        ):
            return None
        # Spans only: its duration histograms and counters repeat what `alpha.*` measures, at a
        # cost per message, so they record into a no-op meter.
        self._telemetry = KafkaTelemetryMiddleware(
            tracer_provider=self._tracer_provider,
            meter_provider=NoOpMeterProvider(),
            include_messages_counters=False,
        )
        return self._telemetry

    def read(self) -> list[MetricSample]:
        """Every current value of the private provider (e.g. for a demo or a report)."""
        if self._private is None:
            raise ConfigError(
                "MetricsMiddleware.read() needs the private meter provider; with your own "
                "meter_provider, read it through your own MetricReader"
            )
        return self._private.read()

    def shutdown(self) -> None:
        """Stop the Prometheus endpoint (when its last user stops) and the private provider."""
        if self._private is not None:
            private, self._private = self._private, None
            _prometheus.release(private)

    def attributes(self, topic: str, label: str = "", key: str = "") -> dict[str, str]:
        """service, topic, broker, plus `key=label` when the label varies (none for a constant)."""
        found = self._attributes.get((key, topic, label))
        if found is None:
            extra = {key: label} if key else {}
            found = {"service": self.service, "topic": topic, "broker": broker_from_topic(topic), **extra}
            self._attributes[(key, topic, label)] = found
        return found

    def series(self, tally: Tally, topic: str, label: str = "", key: str = "") -> Series:
        found = self._series.get((id(tally), key, topic, label))
        if found is None:
            found = tally.series(self.attributes(topic, label, key))
            self._series[(id(tally), key, topic, label)] = found
        return found

    @property
    def instruments(self) -> Instruments:
        return self._instruments


class _MetricsRuntime(BaseMiddleware["KafkaPublishCommand", Any]):
    __slots__ = ("_consumed", "_factory", "_telemetry")

    def __init__(
        self,
        msg: Any,
        /,
        *,
        context: ContextRepo,
        factory: MetricsMiddleware,
        telemetry: BaseMiddleware[KafkaPublishCommand, Any] | None,
    ) -> None:
        super().__init__(msg, context=context)
        self._factory = factory
        self._telemetry = telemetry
        self._consumed = False

    async def on_receive(self) -> None:
        if self._telemetry is not None:
            await self._telemetry.on_receive()

    async def publish_scope(
        self, call_next: Callable[[KafkaPublishCommand], Awaitable[Any]], cmd: KafkaPublishCommand
    ) -> Any:
        if self._telemetry is None:
            return await call_next(cmd)
        return await self._telemetry.publish_scope(call_next, cmd)

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        if not self._consumed and self.msg is not None:
            # FastStream failed to parse the record (e.g. a header value that is not UTF-8), so
            # no consume_scope ran; count it from the outcome error routing left on the record.
            self._record_unparsed(exc_val)
        # Ends the consumer span, after any handler-result publish (a child of it) is done.
        if self._telemetry is None:
            return None
        return await self._telemetry.after_processed(exc_type, exc_val, exc_tb)

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        self._consumed = True
        records = _records(msg.raw_message)
        telemetry = self._telemetry
        if not records:
            return await (call_next(msg) if telemetry is None else telemetry.consume_scope(call_next, msg))
        factory = self._factory
        instruments = factory.instruments
        topic = records[0].topic
        in_flight = factory.series(instruments.in_flight, topic)
        in_flight.value += len(records)
        escaped: list[BaseException] = []

        async def inner(message: StreamMessage[Any]) -> Any:
            # FastStream's telemetry leaves its OpenTelemetry context attached and marks the span
            # failed when anything raises through it, including `AckMessage`, which here means a
            # duplicate or a DLQ write, not an error. So nothing raises through it: the exception
            # is carried out, the span marked failed only for real errors, and re-raised below.
            try:
                return await call_next(message)
            except Exception as exc:
                if not isinstance(exc, AckMessage):
                    span = trace.get_current_span()
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                escaped.append(exc)
                return None

        started = time.perf_counter()
        try:
            result = await (inner(msg) if telemetry is None else telemetry.consume_scope(inner, msg))
        finally:
            in_flight.value -= len(records)
            self._record(msg, records, time.perf_counter() - started, escaped)
        if escaped:
            raise escaped[0]
        return result

    def _record(
        self, msg: StreamMessage[Any], records: Any, duration: float, escaped: list[BaseException]
    ) -> None:
        factory = self._factory
        instruments = factory.instruments
        state = state_of(msg)
        outcome = state.outcome
        label = outcome.value if outcome is not None else (UNROUTED if escaped else Outcome.PROCESSED.value)
        if len(records) == 1:
            counts = {records[0].topic: 1}
        else:
            counts = {}
            for record in records:
                counts[record.topic] = counts.get(record.topic, 0) + 1
        for topic, count in counts.items():
            factory.series(instruments.messages, topic, label, "outcome").value += count
            instruments.duration.record(duration, factory.attributes(topic, label, "outcome"))
            self._record_trouble(state, outcome, topic, count)
        if outcome is not Outcome.REDELIVER:
            self._advance_lag(msg, records)

    def _record_unparsed(self, error: BaseException | None) -> None:
        records = _records(self.msg)
        if not records:
            return
        outcome: Outcome | None = getattr(records[0], RAW_OUTCOME_ATTRIBUTE, None)
        label = outcome.value if outcome is not None else UNROUTED
        factory = self._factory
        for record in records:
            factory.series(factory.instruments.messages, record.topic, label, "outcome").value += 1
            if outcome is Outcome.DEAD_LETTERED and error is not None:
                failures = factory.instruments.failures
                factory.series(failures, record.topic, type(error).__name__, "error.type").value += 1

    def _record_trouble(self, state: MessageState, outcome: Outcome | None, topic: str, count: int) -> None:
        factory = self._factory
        instruments = factory.instruments
        if state.retries:
            factory.series(instruments.retries, topic).value += state.retries * count
        # Failed attempts: every retry followed one; a dead-lettered message also failed its last.
        failed = state.retries + (1 if outcome is Outcome.DEAD_LETTERED else 0)
        if failed and state.error is not None:
            error = type(state.error).__name__
            factory.series(instruments.failures, topic, error, "error.type").value += failed * count
        if state.redis_outage is not None:
            mode = state.redis_outage
            factory.series(instruments.redis_outages, topic, mode, "mode").value += count

    def _advance_lag(self, msg: StreamMessage[Any], records: Any) -> None:
        consumer = getattr(msg, "consumer", None)
        if getattr(consumer, "highwater", None) is None:
            return  # TestKafkaBroker's fake consumer knows no end offsets
        service = self._factory.service
        lag = self._factory.instruments.lag
        for record in records:
            lag.advance(consumer, service, record.topic, record.partition, record.offset + 1)  # type: ignore[arg-type]
