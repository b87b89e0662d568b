"""Serving a service for production: its metrics port, and a graceful stop on SIGTERM.

SIGTERM (or the first Ctrl-C): readiness fails at once (``/readyz`` 503, ``draining``), requests
are still taken for ``drain_seconds`` so a load balancer polling readiness stops sending, then
the listener closes, requests in flight get up to ``shutdown_timeout_seconds`` to finish
(uvicorn's graceful shutdown), the app's lifespan ends, and :func:`serve` returns normally so
the service's own ``finally`` runs: the enclave closes its audit log after the last answers are
recorded. A second signal stops at once.

uvicorn alone re-raises a captured SIGTERM once it has shut down (so the default action kills
the process with the signal's status), which skipped that ``finally``: the last audit entries
and the engine's release. :class:`DrainingServer` keeps the signal to itself and returns.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from medclave.errors import ServiceError
from medclave.ops.health import Health
from medclave.ops.http import operations
from medclave.ops.metrics import MetricsServer, start_metrics_server
from medclave.ops.settings import OpsSettings
from medclave.serving import ServingSettings, server_config

log = logging.getLogger("medclave.ops")


class DrainingServer(uvicorn.Server):
    """uvicorn's server that drains on the first signal (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, health: Health, drain_seconds: float) -> None:
        super().__init__(config)
        self.health = health
        self.drain_seconds = drain_seconds
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.health.draining:  # a second signal: stop now
            log.warning("second stop signal: exiting without waiting for requests")
            self.should_exit = True
            self.force_exit = True
            return
        self.begin_drain(signal.Signals(sig).name)

    def begin_drain(self, why: str = "requested") -> None:
        self.health.start_draining()
        log.info("stopping (%s): not ready; draining for %.1f s", why, self.drain_seconds)
        if self.drain_seconds <= 0:
            self.should_exit = True
            return
        self._timer = threading.Timer(self.drain_seconds, self._stop_accepting)
        self._timer.daemon = True
        self._timer.start()

    def _stop_accepting(self) -> None:
        log.info("drained: closing the listener, finishing requests in flight")
        self.should_exit = True


def serve(app: FastAPI, serving: ServingSettings, ops_settings: OpsSettings,
          **options: Any) -> None:
    """Serve an instrumented ``app`` (:func:`medclave.ops.http.instrument`) in the foreground
    until stopped, with its metrics server; ``service.start_failed`` if it could not start.
    ``options`` are uvicorn's (host, port, TLS files)."""
    ops = operations(app)
    if ops is None:
        raise ServiceError("service.start_failed", "the app was not instrumented")
    metrics_server: MetricsServer | None = None
    if ops_settings.metrics_port is not None:
        try:
            metrics_server = start_metrics_server(ops.metrics, ops_settings.metrics_host,
                                                  ops_settings.metrics_port)
        except OSError as exc:
            raise ServiceError("service.start_failed",
                               f"metrics port {ops_settings.metrics_port}: {exc}") from exc
        log.info("metrics on %s", metrics_server.url)
    options.setdefault("log_level", ops_settings.log_level.lower())
    options.setdefault("access_log", False)
    config = server_config(app, serving, log_config=None,
                           timeout_graceful_shutdown=ops_settings.shutdown_timeout_seconds,
                           **options)
    server = DrainingServer(config, ops.health, ops_settings.drain_seconds)
    try:
        server.run()
    except KeyboardInterrupt:  # a signal that arrived before uvicorn took over the handlers
        pass
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        ops.tracing.shutdown()
    if not server.started:
        raise ServiceError("service.start_failed", "the server did not start; see its log")
    log.info("stopped")
