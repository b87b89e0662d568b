"""Serving the broker with uvicorn: in the foreground (``medclave kbs serve``) or, for tests and
benchmarks, in a background thread on a socket it binds itself (port 0: the OS picks one).
"""

from __future__ import annotations

import uvicorn

from medclave.errors import InputError
from medclave.kbs.app import create_app
from medclave.kbs.settings import KbsSettings
from medclave.serving import BackgroundServer

__all__ = ["BackgroundServer", "serve"]


def serve(settings: KbsSettings) -> None:
    """Run until interrupted (HTTPS when the settings name a certificate and key)."""
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise InputError("config.invalid", "TLS needs both tls_cert_file and tls_key_file")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        server_header=False,
        date_header=False,
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
    )
