"""Serving the broker with uvicorn: in the foreground (``medclave kbs serve``) or, for tests and
benchmarks, in a background thread on a socket it binds itself (port 0: the OS picks one).
"""

from __future__ import annotations

from medclave.kbs.app import create_app
from medclave.kbs.settings import KbsSettings
from medclave.serving import BackgroundServer, run_server

__all__ = ["BackgroundServer", "serve"]


def serve(settings: KbsSettings) -> None:
    """Run until interrupted, as :func:`medclave.serving.run_server` configures every service."""
    run_server(create_app(settings), settings, host=settings.host, port=settings.port,
               log_level="info")
