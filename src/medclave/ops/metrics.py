"""Prometheus metrics per service (``prometheus-client``), each on a registry of its own and
served on a port of its own (:func:`start_metrics_server`).

Every label value comes from an allow-list fixed when the service starts, never from a request:
``service`` (the four services), ``route`` (the app's route templates, ``{owner}`` and all, or
``other``), ``method`` (HTTP methods), ``status`` (three digits), ``code`` (the error catalogue),
``outcome`` (``allowed``/``refused``). Anything else becomes ``other``. So no patient, user,
tenant, prompt or free text can reach a label, whatever a caller sends; the test scrapes every
metric after an end-to-end flow and checks each value against the lists.

Series every service exports: ``medclave_requests_total``, ``medclave_refusals_total``,
``medclave_request_duration_seconds`` (histogram), ``medclave_requests_in_flight``,
``medclave_ready``; the broker also ``medclave_key_releases_total``; the enclave also
``medclave_engine_tokens_total`` and the gauges it registers (``enclave/observe.py``).

Values a service knows only when asked (queue depth, audit log size, attestation age) are read
at scrape time through callbacks (:meth:`ServiceMetrics.gauge`, :meth:`ServiceMetrics.counter`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.registry import Collector

from medclave.errors import CATALOGUE

SERVICES: Final = frozenset({"enclave", "kbs", "idp", "proxy"})
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OUTCOMES: Final = frozenset({"allowed", "refused"})
OTHER: Final = "other"
# Seconds: from a health probe (sub-millisecond) to a long generation (minutes).
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def allowed(value: str, allow: Iterable[str]) -> str:
    """``value`` if the allow-list has it, else ``other``."""
    return value if value in allow else OTHER


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


class _Callback(Collector):
    """One unlabelled-but-for-service metric whose value is read at scrape time."""

    def __init__(self, name: str, doc: str, kind: str, service: str,
                 read: Callable[[], float | None]) -> None:
        self._name, self._doc, self._kind, self._service, self._read = (name, doc, kind,
                                                                         service, read)

    def collect(self) -> Iterator[Metric]:
        try:
            value = self._read()
        except Exception:  # a failing probe must not break the scrape of everything else
            value = None
        family: Metric
        if self._kind == "counter":
            family = CounterMetricFamily(self._name, self._doc, labels=["service"])
        else:
            family = GaugeMetricFamily(self._name, self._doc, labels=["service"])
        if value is not None:
            family.add_metric([self._service], float(value))
        yield family

    def describe(self) -> Iterator[Metric]:
        return self.collect()


class ServiceMetrics:
    """The metrics every service has, plus whatever it registers on :attr:`registry`."""

    def __init__(self, service: str) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        self.service = service
        self.registry = CollectorRegistry()
        self.routes: frozenset[str] = frozenset()
        reg = self.registry
        self._requests = Counter("medclave_requests", "HTTP requests answered",
                                 ["service", "route", "method", "status"], registry=reg)
        self._refusals = Counter("medclave_refusals", "Requests refused, by stable error code",
                                 ["service", "code"], registry=reg)
        self._latency = Histogram("medclave_request_duration_seconds",
                                  "Time to answer (to the first byte of a stream)",
                                  ["service", "route"], buckets=LATENCY_BUCKETS, registry=reg)
        self._in_flight = Gauge("medclave_requests_in_flight", "Requests being served",
                                ["service"], registry=reg)
        self._ready = Gauge("medclave_ready", "1 when /readyz answers ready", ["service"],
                            registry=reg)
        self._in_flight_child = self._in_flight.labels(service)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._releases: Counter | None = None
        self._lock = threading.Lock()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            # The label lookups cost more than the counting: keep each combination's children
            # (bounded: routes x methods x statuses, all from allow-lists).
            label = allowed(route, self.routes)
            children = (self._requests.labels(self.service, label, allowed(method, METHODS),
                                              status_label(status)),
                        self._latency.labels(self.service, label))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def refusal(self, code: str) -> None:
        self._refusals.labels(self.service, allowed(code, CATALOGUE)).inc()

    def in_flight(self, step: int) -> None:
        self._in_flight_child.inc(step)

    def set_ready(self, ready: bool) -> None:
        self._ready.labels(self.service).set(1.0 if ready else 0.0)

    def key_release(self, outcome: str) -> None:
        """The broker's key releases, by outcome."""
        with self._lock:
            if self._releases is None:
                self._releases = Counter("medclave_key_releases", "Key releases by outcome",
                                         ["service", "outcome"], registry=self.registry)
        self._releases.labels(self.service, allowed(outcome, OUTCOMES)).inc()

    def gauge(self, name: str, doc: str, read: Callable[[], float | None]) -> None:
        """A gauge read at scrape time (``None``: no sample)."""
        self.registry.register(_Callback(name, doc, "gauge", self.service, read))

    def counter(self, name: str, doc: str, read: Callable[[], float | None]) -> None:
        """A counter read at scrape time (``name`` without ``_total``)."""
        self.registry.register(_Callback(name, doc, "counter", self.service, read))


class Rate:
    """A per-second rate of a growing total, over the last ``window`` seconds of samples (for
    tokens/s: the engine keeps a total, the scrape asks for a rate)."""

    def __init__(self, total: Callable[[], float], *, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._total, self._window, self._clock = total, window, clock
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        now, value = self._clock(), self._total()
        with self._lock:
            self._samples.append((now, value))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
                self._samples.pop(0)
            then, before = self._samples[0]
        return 0.0 if now <= then else max(0.0, value - before) / (now - then)


class MetricsServer:
    """The exposition endpoint on its own port (a WSGI server thread), stopped with the service."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int) -> None:
        self._server, self._thread = start_wsgi_server(port, host, metrics.registry)
        self.port: int = self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self._server.server_name}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(metrics: ServiceMetrics, host: str, port: int) -> MetricsServer:
    return MetricsServer(metrics, host, port)
