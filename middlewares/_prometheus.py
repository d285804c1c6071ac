"""Private meter providers, and the Prometheus `/metrics` endpoint started once per port.

Every `MetricsMiddleware` built without a `meter_provider` gets a provider of its own (so tests
and several services in one process never fight over the global one) that always carries an
`InMemoryMetricReader`, so a demo or report can read the real counters back. With a Prometheus
port, all middlewares on that port share one provider and one HTTP server: two services in a
process then show up as two `service` label values of the same metric families instead of
duplicate families that a scraper would reject.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from prometheus_client import CollectorRegistry, start_http_server

__all__ = ("MetricSample", "PrivateMeters", "acquire", "release")


class MetricSample(NamedTuple):
    """One value read back from the meters (histograms give `<name>.count` and `<name>.sum`)."""

    name: str
    attributes: dict[str, Any]
    value: float


@dataclass(slots=True)
class PrivateMeters:
    """A meter provider this package created, its in-memory reader, and maybe an HTTP endpoint."""

    provider: MeterProvider
    reader: InMemoryMetricReader
    port: int | None = None
    server: WSGIServer | None = None
    thread: threading.Thread | None = None
    users: int = 0
    registry: CollectorRegistry | None = field(default=None, repr=False)

    def read(self) -> list[MetricSample]:
        """Every current value (histograms give `<name>.count` and `<name>.sum`)."""
        data = self.reader.get_metrics_data()
        samples: list[MetricSample] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if isinstance(point, HistogramDataPoint):
                            samples.append(MetricSample(metric.name + ".count", attributes, point.count))
                            samples.append(MetricSample(metric.name + ".sum", attributes, point.sum))
                        elif isinstance(point, NumberDataPoint):
                            samples.append(MetricSample(metric.name, attributes, point.value))
        return samples


_BY_PORT: dict[int, PrivateMeters] = {}
_LOCK = threading.Lock()


def acquire(port: int | None, *, addr: str = "127.0.0.1", service: str = "") -> PrivateMeters:
    """A private provider; with `port`, the one serving `/metrics` there (0 = any free port).

    Its resource's `service.name` is `service` (Prometheus' `target_info`); services sharing a
    port share the first one's resource and are told apart by their `service` label.
    """
    resource = Resource.create({SERVICE_NAME: service} if service else {})
    if port is None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader], resource=resource, shutdown_on_exit=False)
        return PrivateMeters(provider, reader, users=1)
    with _LOCK:
        meters = _BY_PORT.get(port)
        if meters is None:
            meters = _serve(port, addr, resource)
            # Port 0 asks for any free port: the server is recorded under the port it got, so a
            # middleware asking for that number shares it instead of failing to bind.
            _BY_PORT[meters.port or port] = meters
        meters.users += 1
        return meters


def release(meters: PrivateMeters) -> None:
    """Drop one user; the last one stops the HTTP server and shuts the provider down."""
    with _LOCK:
        meters.users -= 1
        if meters.users > 0:
            return
        for port, served in list(_BY_PORT.items()):
            if served is meters:
                del _BY_PORT[port]
    if meters.server is not None:
        meters.server.shutdown()
        meters.server.server_close()
    if meters.thread is not None:
        meters.thread.join(timeout=5)
    meters.provider.shutdown()


def _serve(port: int, addr: str, resource: Resource) -> PrivateMeters:
    registry = CollectorRegistry(auto_describe=False)
    prometheus = PrometheusMetricReader(registry=registry)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[prometheus, reader], resource=resource, shutdown_on_exit=False)
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError:
        provider.shutdown()
        raise
    return PrivateMeters(
        provider, reader, port=server.server_port, server=server, thread=thread, registry=registry
    )
