"""Wiring a service's FastAPI app for operations: ``/healthz``, ``/readyz``, ``/openapi.json``,
and one ASGI middleware that gives every request its request id, counts it, times it and
traces it.

A service calls :func:`instrument` once, after building its app and before serving it, and
:func:`note_refusal` from the handler that logs its refusals (the code is known there; in an
encrypted answer it is not visible outside the service). The middleware is pure ASGI (no
``BaseHTTPMiddleware``): a streamed answer passes through untouched and its latency is the time
to its first byte.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medclave.ops import logs
from medclave.ops.health import Health
from medclave.ops.metrics import ServiceMetrics
from medclave.ops.tracing import Tracing, current_headers

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"


@dataclass
class Operations:
    """What :func:`instrument` attached to an app (``app.state.ops``)."""

    service: str
    metrics: ServiceMetrics
    health: Health
    tracing: Tracing


def operations(app: Any) -> Operations | None:
    ops = getattr(getattr(app, "state", None), "ops", None)
    return ops if isinstance(ops, Operations) else None


def note_refusal(request: Request, code: str) -> None:
    """Count a refusal by its stable code (a no-op on an app that is not instrumented)."""
    ops = operations(request.app)
    if ops is not None:
        ops.metrics.refusal(code)


class _Observe:
    def __init__(self, app: ASGIApp, ops: Operations) -> None:
        self.app = app
        self.ops = ops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw = headers.get(logs.REQUEST_ID_HEADER.encode())
        rid = logs.accept_request_id(raw.decode("latin-1") if raw else None)
        token = logs.request_id.set(rid)
        metrics = self.ops.metrics
        if not metrics.routes:
            metrics.routes = route_templates(scope["app"])
        started = time.perf_counter()
        status = [500]
        elapsed: list[float] = []
        metrics.in_flight(1)
        span = self.ops.tracing.server_span(scope["method"], headers)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                elapsed.append(time.perf_counter() - started)
            await send(message)

        try:
            with span as current:
                trace_token = logs.trace_id.set(self.ops.tracing.trace_id_of(current))
                headers_token = logs.trace_headers.set(
                    current_headers() if current is not None else None)
                try:
                    await self.app(scope, receive, sending)
                finally:
                    route = getattr(scope.get("route"), "path", None) or "other"
                    self.ops.tracing.finish_server_span(current, route, status[0])
                    logs.trace_headers.reset(headers_token)
                    logs.trace_id.reset(trace_token)
        finally:
            metrics.in_flight(-1)
            seconds = elapsed[0] if elapsed else time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "other"
            metrics.request(route, scope["method"], status[0], seconds)
            logs.request_id.reset(token)


def instrument(app: FastAPI, *, service: str, health: Health | None = None,
               metrics: ServiceMetrics | None = None, tracing: Tracing | None = None
               ) -> Operations:
    """Add the health routes, the OpenAPI document and the observing middleware to ``app``."""
    ops = Operations(service, metrics or ServiceMetrics(service), health or Health(),
                     tracing or Tracing.off())
    app.state.ops = ops

    @app.get(HEALTH_PATH, tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "alive"}

    @app.get(READY_PATH, tags=["operations"])
    async def readyz() -> JSONResponse:
        """Ready for work: every readiness check holds and no shutdown has begun."""
        # On a thread: a check may touch a store, the TEE or the network.
        ready, checks = await run_in_threadpool(ops.health.readiness)
        ops.metrics.set_ready(ready)
        return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                            status_code=200 if ready else 503,
                            headers={"cache-control": "no-store"})

    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi() -> JSONResponse:
        """The service's OpenAPI document (FastAPI's own, built from its routes)."""
        return JSONResponse(app.openapi())

    app.add_middleware(_Observe, ops=ops)
    return ops


def route_templates(app: FastAPI) -> frozenset[str]:
    """Every route template the app serves (the metrics' ``route`` allow-list): its routes,
    those of included routers (FastAPI 0.138 keeps them behind ``original_router``), and the
    OpenAPI document's paths (prefixes applied)."""
    found: set[str] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            path = getattr(route, "path", None)
            if isinstance(path, str):
                found.add(path)
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(list(getattr(inner, "routes", [])))

    walk(list(app.routes))
    # An app whose schema cannot be built still counts its routes.
    with contextlib.suppress(Exception):
        found.update(app.openapi().get("paths", {}))
    return frozenset(found)
