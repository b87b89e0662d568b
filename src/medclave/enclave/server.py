"""Serving the enclave with uvicorn: in the foreground (``medclave enclave serve``) (for tests,
benchmarks and the demo in a background thread: :mod:`medclave.background`).
"""

from __future__ import annotations

from medclave.enclave.app import create_app
from medclave.enclave.boot import boot
from medclave.enclave.settings import EnclaveSettings
from medclave.serving import run_server

__all__ = ["serve"]


def serve(settings: EnclaveSettings) -> None:
    """Boot, then serve until interrupted; release the model and keys on the way out."""
    booted = boot(settings)
    try:
        run_server(create_app(booted.service, settings), settings, host=settings.host,
                   port=settings.port, log_level="info", access_log=False)
    finally:
        booted.close()
