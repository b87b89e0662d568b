"""What operations cost per request (issue 16): metrics, request ids, JSON logs and traces.

Rows, each µs per request through the ASGI app in one event loop (no sockets, so the figure is
the instrumentation's, not the network's):
  bare app                  a FastAPI app with one GET route answering a small JSON body; the
                            baseline of every ratio
  instrumented              the same app after ``ops.http.instrument``: request id, counters,
                            latency histogram, in-flight gauge (tracing off, the default)
  instrumented + log line   the route also logs one INFO line, formatted as JSON
                            (``ops.logs.JsonFormatter``) into a discarded stream
  bare + text log line      the bare app logging the same line in the plain text format (what
                            the services logged before): the JSON cost is the ratio between
                            this row and the one above
  instrumented + tracing    with OpenTelemetry on (in-memory exporter, synchronous processor)

MEDCLAVE_BENCH_OPS_N requests per round (default 2000; short mode: MEDCLAVE_BENCH_OPS_N=500),
the rows alternating in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks._common import Report, env_int, interleave
from medclave.ops.http import instrument
from medclave.ops.logs import JsonFormatter
from medclave.ops.tracing import Tracing

LOGGER = "medclave.bench.ops"


def _app(*, logs: bool) -> FastAPI:
    app = FastAPI()
    log = logging.getLogger(LOGGER)

    @app.get("/v1/things/{thing}")
    async def thing(thing: str) -> dict[str, Any]:
        if logs:
            log.info("request %s status=%d tokens=%d", thing, 200, 17)
        return {"thing": thing, "ok": True}

    return app


def _runner(app: FastAPI, n: int) -> Callable[[], float]:
    """µs per request for ``n`` GETs through the app's ASGI interface."""
    scope_base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                  "method": "GET", "scheme": "http", "root_path": "", "query_string": b"",
                  "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}

    async def one(i: int) -> None:
        scope = dict(scope_base, path=f"/v1/things/t{i}", raw_path=f"/v1/things/t{i}".encode(),
                     headers=[(b"host", b"bench"), (b"x-request-id", b"bench-request-0001")])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200

    async def many() -> float:
        await app({"type": "lifespan"}, _lifespan_receive(), _discard)
        for i in range(20):  # warm-up: routing caches, first-use imports
            await one(i)
        start = time.perf_counter()
        for i in range(n):
            await one(i)
        return (time.perf_counter() - start) / n * 1e6

    return lambda: asyncio.run(many())


def _lifespan_receive() -> Callable[[], Any]:
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "lifespan.shutdown"}
    return receive


async def _discard(message: dict[str, Any]) -> None:
    return None


def main() -> None:
    n = env_int("MEDCLAVE_BENCH_OPS_N", 2000, minimum=100)
    log = logging.getLogger(LOGGER)
    log.propagate = False
    log.setLevel(logging.INFO)
    sink = io.StringIO()
    json_handler = logging.StreamHandler(sink)
    json_handler.setFormatter(JsonFormatter("bench"))
    text_handler = logging.StreamHandler(sink)
    text_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    bare = _app(logs=False)
    instrumented = _app(logs=False)
    instrument(instrumented, service="enclave")
    logged = _app(logs=True)
    instrument(logged, service="enclave")
    text_logged = _app(logs=True)
    traced = _app(logs=False)
    exporter = InMemorySpanExporter()
    instrument(traced, service="enclave", tracing=Tracing("enclave", exporter))

    def with_handler(handler: logging.Handler, run: Callable[[], float]) -> Callable[[], float]:
        def measure() -> float:
            log.addHandler(handler)
            try:
                return run()
            finally:
                log.removeHandler(handler)
                sink.seek(0)
                sink.truncate()
        return measure

    def traced_run() -> float:
        try:
            return _runner(traced, n)()
        finally:
            exporter.clear()

    got = interleave({
        "bare": _runner(bare, n),
        "instrumented": _runner(instrumented, n),
        "logged": with_handler(json_handler, _runner(logged, n)),
        "text": with_handler(text_handler, _runner(text_logged, n)),
        "traced": traced_run,
    })
    report = Report("operations", f"per-request cost of operations, {n} requests per round, "
                                  "ASGI in-process")
    report.baseline("bare app", got["bare"], "µs/request")
    report.row("instrumented", got["instrumented"], "µs/request", baseline=got["bare"])
    report.row("instrumented + JSON log line", got["logged"], "µs/request",
               baseline=got["bare"])
    report.row("bare + text log line", got["text"], "µs/request", baseline=got["bare"])
    report.row("instrumented + tracing", got["traced"], "µs/request", baseline=got["bare"])
    report.ratio_note("JSON log line vs text log line (each with its app)", got["logged"],
                      got["text"])
    overhead = [i - b for i, b in zip(got["instrumented"], got["bare"], strict=True)]
    report.row("metrics + request id overhead", overhead, "µs/request")
    report.note("µs of wall time per request through the ASGI interface; no socket, so an "
                "HTTP request on loopback (hundreds of µs) or an inference (seconds) dwarfs it.")
    report.emit()


if __name__ == "__main__":
    main()
