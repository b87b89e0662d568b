"""Serving the enclave with uvicorn: in the foreground (``medclave enclave serve``) (for tests,
benchmarks and the demo in a background thread: :mod:`medclave.background`).
"""

from __future__ import annotations

from medclave.enclave.app import create_app
from medclave.enclave.boot import RoutesFactory, boot
from medclave.enclave.inner_apps import AppFactory
from medclave.enclave.settings import EnclaveSettings
from medclave.ops import lifecycle
from medclave.ops.logs import configure_logging
from medclave.serving import MeshServing

__all__ = ["MESH_OPEN_PATHS", "serve"]

# In a mesh, what a peer without an allowed workload certificate may still reach: the health
# probes (an orchestrator holds no workload certificate). Everything else needs the policy.
MESH_OPEN_PATHS = ("/healthz", "/readyz")


def serve(settings: EnclaveSettings, apps: tuple[AppFactory, ...] = (), *,
          routes: RoutesFactory | None = None) -> None:
    """Boot, then serve until stopped (SIGTERM drains: :mod:`medclave.ops.lifecycle`);
    release the model and keys, and close the audit log, on the way out. ``apps``: applications
    inside the encapsulation (medclave.enclave.inner_apps); ``routes``: inner routes of the
    clinical apps (medclave.enclave.routes)."""
    configure_logging("enclave", level=settings.log_level, fmt=settings.log_format)
    booted = boot(settings, apps=apps, routes=routes)
    try:
        mesh = None if booted.mesh is None else MeshServing(booted.mesh.tls, MESH_OPEN_PATHS)
        lifecycle.serve(create_app(booted.service, settings), settings, settings,
                        host=settings.host, port=settings.port, mesh=mesh)
    finally:
        booted.close()
