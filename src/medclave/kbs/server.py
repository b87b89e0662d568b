"""Serving the broker with uvicorn: in the foreground (``medclave kbs serve``) (for tests and
benchmarks in a background thread: :mod:`medclave.background`).
"""

from __future__ import annotations

from medclave.errors import InputError
from medclave.kbs.app import create_app
from medclave.kbs.settings import KbsSettings
from medclave.ops import lifecycle
from medclave.ops.logs import configure_logging

__all__ = ["serve"]


def serve(settings: KbsSettings) -> None:
    """Run until interrupted (HTTPS when the settings name a certificate and key), as
    :func:`medclave.serving.run_server` configures every service."""
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise InputError("config.invalid", "TLS needs both tls_cert_file and tls_key_file")
    if settings.mesh_file is not None and settings.tls_cert_file is not None:
        raise InputError("config.invalid", "mesh_file serves the mesh's own certificates: "
                                           "drop tls_cert_file and tls_key_file")
    # JSON lines at the configured level: under uvicorn's own defaults the broker's INFO lines
    # (its refusals) had no handler and were dropped.
    configure_logging("kbs", level=settings.log_level, fmt=settings.log_format)
    app = create_app(settings)
    if app.state.mesh is not None:  # mutual TLS with the mesh's own certificates
        lifecycle.serve(app, settings, settings, host=settings.host, port=settings.port,
                        mesh=app.state.mesh.serving())
        return
    lifecycle.serve(app, settings, settings, host=settings.host,
                    port=settings.port, ssl_certfile=settings.tls_cert_file,
                    ssl_keyfile=settings.tls_key_file)
