"""Serving the enclave with uvicorn: in the foreground (``medclave enclave serve``) or, for tests,
benchmarks and the demo, in a background thread on a socket it binds itself (port 0: any).
"""

from __future__ import annotations

import uvicorn

from medclave.enclave.app import create_app
from medclave.enclave.boot import boot
from medclave.enclave.settings import EnclaveSettings
from medclave.serving import BackgroundServer

__all__ = ["BackgroundServer", "serve"]


def serve(settings: EnclaveSettings) -> None:
    """Boot, then serve until interrupted; release the model and keys on the way out."""
    booted = boot(settings)
    try:
        uvicorn.run(create_app(booted.service, settings), host=settings.host, port=settings.port,
                    log_level="info", server_header=False, date_header=False,
                    access_log=False)
    finally:
        booted.close()
