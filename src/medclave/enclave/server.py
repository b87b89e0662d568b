"""Serving the enclave with uvicorn: in the foreground (``medclave enclave serve``) or, for tests,
benchmarks and the demo, in a background thread on a socket it binds itself (port 0: any).
"""

from __future__ import annotations

from medclave.enclave.app import create_app
from medclave.enclave.boot import RoutesFactory, boot
from medclave.enclave.settings import EnclaveSettings
from medclave.serving import BackgroundServer, run_server

__all__ = ["BackgroundServer", "serve"]


def serve(settings: EnclaveSettings, *, routes: RoutesFactory | None = None) -> None:
    """Boot, then serve until interrupted; release the model and keys on the way out.
    ``routes``: inner routes of the clinical apps (medclave.enclave.routes)."""
    booted = boot(settings, routes=routes)
    try:
        run_server(create_app(booted.service, settings), settings, host=settings.host,
                   port=settings.port, log_level="info", access_log=False)
    finally:
        booted.close()
