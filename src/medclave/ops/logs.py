"""Structured logs: one JSON object per line, the same shape for every service, with the request
id of the request being served.

Shape (every key always present, so a log pipeline needs one parser)::

    {"ts": "2026-12-06T06:00:00.123Z", "level": "INFO", "service": "kbs",
     "logger": "medclave.kbs", "message": "...", "request_id": "…" | null,
     "trace_id": "…" | null, "exc_type": "…" | null}

PHI stays out by construction where this module can ensure it: an exception is logged by its
type and the frames of its traceback (file, line, function), never its message, which may quote
request content; everything else is what the services log, and they log codes, counts and
random ids (tests/ops/test_logs.py drives a flow and searches every line for its PHI).

The request id: accepted from the caller's ``X-Request-Id`` when it is a plain token (so the
proxy's id follows a request into the enclave), else made here; kept in a context variable for
the request's task and the threads it hands work to (anyio copies the context).

uvicorn's own configuration is replaced (``log_config=None``): under its defaults only its own
loggers have a handler, so a service's INFO lines (the broker's refusals) fell to Python's
last-resort handler, which drops everything below WARNING.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, TextIO

REQUEST_ID_HEADER: Final = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{7,63}$")
request_id: ContextVar[str | None] = ContextVar("medclave_request_id", default=None)
trace_id: ContextVar[str | None] = ContextVar("medclave_trace_id", default=None)
# W3C trace context of the span serving the request (set by medclave.ops.http when tracing).
trace_headers: ContextVar[dict[str, str] | None] = ContextVar("medclave_trace_headers",
                                                              default=None)


def outgoing_headers() -> dict[str, str]:
    """Headers a service adds to a call it makes while serving a request: the request id
    (so the next service's log lines carry it) and, when tracing, ``traceparent``. Empty
    outside a request. Stdlib only: the client's SDK path imports this module."""
    rid = request_id.get()
    if rid is None:
        return {}
    return {REQUEST_ID_HEADER: rid, **(trace_headers.get() or {})}


def new_request_id() -> str:
    return secrets.token_hex(12)


def accept_request_id(value: str | None) -> str:
    """The caller's id when it is a plain token of 8 to 64 characters, else a fresh one (a
    header is never copied into the log unchecked: it could carry anything)."""
    if value is not None and _REQUEST_ID.match(value):
        return value
    return new_request_id()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, in the shape of the module docstring."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
            "trace_id": trace_id.get(),
            "exc_type": None,
        }
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            # Frames only: the exception's message may quote request content.
            frames = traceback.extract_tb(record.exc_info[2])
            out["frames"] = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
                             for f in frames][-12:]
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id.get() or "-"
        saved = record.exc_info, record.exc_text
        if record.exc_info and record.exc_info[0] is not None:
            record.msg = f"{record.msg} [{record.exc_info[0].__name__}]"
            record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json",
                      stream: TextIO | None = None) -> logging.Handler:
    """Route every logger (uvicorn's included) to one handler on ``stream`` (stderr) in ``fmt``
    at ``level``; returns the handler. uvicorn's access log is off: requests are counted in
    the metrics, and a path can name a resource."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(_TextFormatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True
    return handler
