"""OpenTelemetry traces: proxy → enclave → engine → audit, off by default.

Each service has its own :class:`Tracing` (a tracer provider of its own, never the process-wide
one, so services sharing a process in tests keep their spans apart). The observing middleware
(:mod:`medclave.ops.http`) opens a server span per request, continuing a W3C ``traceparent``
sent by the caller (the proxy sends one on its outer request to the enclave:
:func:`medclave.ops.logs.outgoing_headers`); inside, :func:`span` opens child spans (``engine generate``,
``audit log append``) under whatever service span the request is in.

Attributes are fixed and few: ``http.request.method``, ``http.route`` (the route template),
``http.response.status_code``, ``medclave.service``. Never a prompt, an answer, a user, a tenant,
a patient or a token: a span is exported to a collector outside the enclave.

Exporters: ``console`` (spans as JSON lines on stderr), ``otlp`` (OTLP over HTTP; the exporter
package ``opentelemetry-exporter-otlp-proto-http`` is optional and imported only then), or an
exporter object passed in (the tests' in-memory one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from medclave.errors import InputError

_PROPAGATOR = TraceContextTextMapPropagator()
OTLP_TIMEOUT_SECONDS: Final = 5.0
_current: ContextVar[Tracing | None] = ContextVar("medclave_tracing", default=None)


class Tracing:
    """A service's tracer (or none: every method is then a cheap no-op)."""

    def __init__(self, service: str, exporter: SpanExporter | None) -> None:
        self.service = service
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if exporter is not None:
            self._provider = TracerProvider(resource=Resource.create({
                SERVICE_NAME: f"medclave-{service}"}))
            # Simple (synchronous) export keeps the tests deterministic; an OTLP exporter is
            # wrapped in a batch processor instead (see :meth:`of`).
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
            self._tracer = self._provider.get_tracer("medclave")

    @classmethod
    def off(cls) -> Tracing:
        return cls("off", None)

    @classmethod
    def of(cls, service: str, mode: str, endpoint: str | None = None) -> Tracing:
        """From the settings: ``off``, ``console`` or ``otlp`` (with ``endpoint``)."""
        if mode == "off":
            return cls.off()
        if mode == "console":
            return cls(service, ConsoleSpanExporter())
        if not endpoint:
            raise InputError("config.invalid", "tracing otlp needs otlp_endpoint")
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise InputError("config.invalid", "tracing otlp needs the package "
                             "opentelemetry-exporter-otlp-proto-http (the extra "
                             "medclave[otlp])") from exc
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracing = cls(service, None)
        tracing._provider = TracerProvider(resource=Resource.create({
            SERVICE_NAME: f"medclave-{service}"}))
        # Batched, off the request path: a slow or absent collector delays no answer (spans
        # queue, up to the SDK's bound, and are dropped past it). Flushed on shutdown.
        tracing._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=traces_url(endpoint), timeout=OTLP_TIMEOUT_SECONDS)))
        tracing._tracer = tracing._provider.get_tracer("medclave")
        return tracing

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def server_span(self, method: str, headers: Mapping[bytes, bytes]) -> Iterator[Span | None]:
        if self._tracer is None:
            yield None
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()
                   if k in (b"traceparent", b"tracestate")}
        parent = _PROPAGATOR.extract(carrier)
        token = _current.set(self)
        try:
            with self._tracer.start_as_current_span(
                    f"{method} {self.service}", context=parent, kind=SpanKind.SERVER,
                    attributes={"http.request.method": method,
                                "medclave.service": self.service}) as current:
                yield current
        finally:
            _current.reset(token)

    def finish_server_span(self, current: Span | None, route: str, status: int) -> None:
        if current is None:
            return
        current.set_attribute("http.route", route)
        current.set_attribute("http.response.status_code", status)
        current.update_name(f"{current_method(current)} {route}")

    @staticmethod
    def trace_id_of(current: Span | None) -> str | None:
        if current is None:
            return None
        ctx = current.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def traces_url(endpoint: str) -> str:
    """The URL spans are POSTed to. A collector's base URL (``http://collector:4318``) gets the
    OTLP/HTTP traces path ``/v1/traces`` (OTLP specification, "OTLP/HTTP Request": the
    signal-specific path of a base endpoint); a URL with a path is used as given."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError("config.invalid", "otlp_endpoint must be an http(s) URL")
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, "/v1/traces", parts.query, ""))
    return endpoint


def current_method(current: Span) -> str:
    attributes: Any = getattr(current, "attributes", None) or {}
    return str(attributes.get("http.request.method", "HTTP"))


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """A child span of the request being served, when its service traces (else nothing)."""
    tracing = _current.get()
    if tracing is None or tracing._tracer is None:
        yield
        return
    with tracing._tracer.start_as_current_span(name, kind=SpanKind.INTERNAL,
                                               attributes={"medclave.service": tracing.service}):
        yield


def current_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span, for the next service."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier
