"""The enhanced tier's OpenTelemetry instruments, created once per `MeterProvider`.

Several `MetricsMiddleware` objects (one per broker or router, several services in one process)
may share a provider; creating the instruments again for each would register duplicates, so
they live here, keyed by provider, and every middleware on that provider reuses them.

Names (Prometheus shows dots as underscores and adds `_total` / `_seconds`):
- `alpha.messages` (counter): consumed messages by `outcome`; each message is counted once.
- `alpha.messages.failed` (counter): processing attempts that raised, by `error.type` (class name).
- `alpha.messages.retried` (counter): retries after a failed attempt.
- `alpha.dedup.redis_outage` (counter): messages that met a Redis outage, by `mode` (paused / failed_open).
- `alpha.message.duration` (histogram, s): consume-to-outcome time, retries and DLQ write included.
- `alpha.messages.in_flight` (up-down counter): messages being processed now.
- `alpha.consumer.lag` (gauge): records between the last processed offset and the partition's end,
  for every assigned partition of a watched broker (`LagTracker.watch`); a partition that has
  processed nothing yet is measured from its consumer's fetch position (0 when idle).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from weakref import WeakKeyDictionary

from aiokafka.structs import TopicPartition
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

from alpha_streaming._topics import broker_from_topic

__all__ = ("Instruments", "LagTracker", "Series", "Tally", "instruments_for")

METER_NAME = "alpha_streaming.middlewares"
# Bucket bounds in seconds: sub-millisecond handlers up to retried ones that back off for seconds.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _Highwater(Protocol):
    def highwater(self, partition: Any) -> int | None: ...


@dataclass(slots=True)
class _Position:
    consumer: _Highwater
    partition: Any  # aiokafka TopicPartition
    next_offset: int
    attributes: dict[str, str | int]


@dataclass(slots=True)
class LagTracker:
    """Next offset to process per (service, group, topic, partition); lag is read at collection.

    Keys are bounded by the assigned partitions. The gauge is observed from whatever thread
    collects (the Prometheus server thread), so it reads a snapshot and only calls the
    consumer's `highwater()`, a plain lookup of the last fetch response.
    """

    _positions: dict[tuple[str, str, str, int], _Position] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Brokers (all their subscribers' consumers) or single consumers, by id: each reported once.
    _watched: dict[int, tuple[str, Any]] = field(default_factory=dict)

    def watch(self, service: str, source: Any) -> None:
        """Also report the assigned partitions that processed nothing yet of `source`: a broker
        (every subscriber's consumer, from its start) or one consumer."""
        with self._lock:
            self._watched[id(source)] = (service, source)

    def advance(
        self, consumer: _Highwater, service: str, topic: str, partition: int, next_offset: int
    ) -> None:
        group = str(getattr(consumer, "_group_id", None) or "")
        key = (service, group, topic, partition)
        position = self._positions.get(key)
        if position is not None and position.consumer is consumer:
            if next_offset > position.next_offset:
                position.next_offset = next_offset
            return
        attributes = _lag_attributes(service, topic, partition, group)
        with self._lock:
            self._positions[key] = _Position(
                consumer, TopicPartition(topic, partition), next_offset, attributes
            )
        # Its other partitions too, for apps whose broker nobody passed to `watch`.
        self.watch(service, consumer)

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            positions = list(self._positions.items())
        for key, position in positions:
            try:
                assigned = position.consumer.assignment()  # type: ignore[attr-defined]
                highwater = position.consumer.highwater(position.partition)
            except Exception:  # a stopped consumer: forget the partition
                highwater, assigned = None, ()
            if position.partition not in assigned:
                # Revoked or the consumer stopped: another member reports it now.
                with self._lock:
                    if self._positions.get(key) is position:
                        del self._positions[key]
                continue
            if highwater is not None:
                yield Observation(max(highwater - position.next_offset, 0), position.attributes)
        yield from self._unprocessed({key for key, _ in positions})

    def _unprocessed(self, reported: set[tuple[str, str, str, int]]) -> Iterable[Observation]:
        with self._lock:
            watched = list(self._watched.items())
        for ident, (service, source) in watched:
            if getattr(source, "_closed", False):  # a stopped consumer is never used again
                with self._lock:
                    self._watched.pop(ident, None)
                continue
            for consumer in _consumers(source):
                group = str(getattr(consumer, "_group_id", None) or "")
                try:
                    assigned = consumer.assignment()
                    states = consumer._subscription.subscription.assignment
                except Exception:  # stopped, or not an aiokafka consumer (the in-memory test broker)
                    continue
                for tp in assigned:
                    key = (service, group, tp.topic, tp.partition)
                    state = states.state_value(tp)
                    highwater = consumer.highwater(tp)
                    if key in reported or state is None or not state.has_valid_position or highwater is None:
                        continue
                    reported.add(key)
                    attributes = _lag_attributes(service, tp.topic, tp.partition, group)
                    yield Observation(max(highwater - state.position, 0), attributes)


def _consumers(source: Any) -> list[Any]:
    """The consumers of a broker's subscribers, or `source` itself when it is one consumer."""
    if not hasattr(source, "subscribers"):
        return [source]
    found = [
        c for sub in source.subscribers for c in getattr(sub, "consumer_subgroup", None) or [sub.consumer]
    ]
    return [c for c in found if c is not None]


def _lag_attributes(service: str, topic: str, partition: int, group: str) -> dict[str, str | int]:
    return {
        "service": service,
        "topic": topic,
        "partition": partition,
        "consumer_group": group,
        "broker": broker_from_topic(topic),
    }


@dataclass(slots=True)
class Series:
    """One attribute set of a tally; the hot path only does `series.value += n`."""

    attributes: dict[str, str]
    value: int = 0


@dataclass(slots=True)
class Tally:
    """Counts kept as plain ints and reported by an observable instrument at collection.

    An SDK `Counter.add` costs tens of microseconds per call (attribute hashing, locks); per
    message that was a measurable share of the whole stack's cost, an int increment is not.
    Series are shared by attribute set, so two middlewares on one provider add up.
    """

    _series: dict[frozenset[tuple[str, str]], Series] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def series(self, attributes: dict[str, str]) -> Series:
        key = frozenset(attributes.items())
        with self._lock:
            found = self._series.get(key)
            if found is None:
                found = self._series[key] = Series(dict(attributes))
            return found

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            series = list(self._series.values())
        return [Observation(s.value, s.attributes) for s in series]


@dataclass(frozen=True, slots=True)
class Instruments:
    messages: Tally
    failures: Tally
    retries: Tally
    redis_outages: Tally
    in_flight: Tally
    duration: Histogram
    lag: LagTracker


_BY_PROVIDER: WeakKeyDictionary[MeterProvider, Instruments] = WeakKeyDictionary()
_CREATE_LOCK = threading.Lock()


def instruments_for(provider: MeterProvider) -> Instruments:
    """The instruments of `provider`, created on first use."""
    with _CREATE_LOCK:
        found = _BY_PROVIDER.get(provider)
        if found is None:
            found = _create(provider)
            _BY_PROVIDER[provider] = found
        return found


def _create(provider: MeterProvider) -> Instruments:
    meter = provider.get_meter(METER_NAME)
    lag = LagTracker()
    meter.create_observable_gauge(
        "alpha.consumer.lag",
        callbacks=[lag.observe],
        unit="{message}",
        description="Records between the last processed offset and the partition's end offset.",
    )
    tallies = {
        "alpha.messages": ("{message}", "Consumed messages by final outcome."),
        "alpha.messages.failed": ("{attempt}", "Processing attempts that raised."),
        "alpha.messages.retried": ("{attempt}", "Retries after a failed attempt."),
        "alpha.dedup.redis_outage": ("{message}", "Messages that met a Redis outage in dedup, by mode."),
    }
    counters = []
    for name, (unit, description) in tallies.items():
        tally = Tally()
        meter.create_observable_counter(name, callbacks=[tally.observe], unit=unit, description=description)
        counters.append(tally)
    in_flight = Tally()
    meter.create_observable_up_down_counter(
        "alpha.messages.in_flight",
        callbacks=[in_flight.observe],
        unit="{message}",
        description="Messages being processed.",
    )
    messages, failures, retries, redis_outages = counters
    return Instruments(
        messages=messages,
        failures=failures,
        retries=retries,
        redis_outages=redis_outages,
        in_flight=in_flight,
        duration=meter.create_histogram(
            "alpha.message.duration",
            unit="s",
            description="Time from the start of processing to the outcome, retries included.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        ),
        lag=lag,
    )
