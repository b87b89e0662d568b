"""The broker's FastAPI application: routers, error bodies, and its lifetime.

Error bodies are ``{"error": {"code", "message"}}`` from the catalogue, never the internal
detail. ``kbs.unauthorized`` answers with the very body of ``kbs.not_found`` (errors.py): from
outside, a resource one may not touch and one that does not exist look the same. The real code is
kept in the decision log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from medclave.errors import InputError, KbsError, MedclaveError
from medclave.kbs.api import owner_router, release_router
from medclave.kbs.factory import build_broker, open_limiter
from medclave.kbs.mesh_ca import BrokerMesh, MeshConfig, mesh_router
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings, get_settings
from medclave.kbs.store import Decision
from medclave.ops.health import Health
from medclave.ops.http import instrument, note_refusal
from medclave.ops.metrics import ServiceMetrics
from medclave.ops.tracing import Tracing
from medclave.serving import install_error_handlers, public_response
from medclave.util.clock import system_clock

log = logging.getLogger("medclave.kbs")

_MASKED = {"kbs.unauthorized": "kbs.not_found"}


def error_response(exc: MedclaveError) -> JSONResponse:
    return public_response(MedclaveError(_MASKED.get(exc.code, exc.code)))


def _log_refusal(request: Request, exc: MedclaveError) -> None:
    note_refusal(request, exc.code)  # the real code: the body may mask it (kbs.not_found)
    if exc.status >= 500:
        log.error("kbs %s %s: %s", request.method, request.url.path, exc)
    else:
        log.info("kbs refused %s %s: %s", request.method, request.url.path, exc.code)


def _route_error(status: int) -> JSONResponse:
    # An unknown route looks like an unknown resource; a wrong method like a malformed request.
    if status == 404:
        return error_response(KbsError("kbs.not_found"))
    return error_response(InputError("input.malformed"))


def _log_unexpected(request: Request, exc: Exception) -> None:
    log.error("kbs internal error on %s %s", request.method, request.url.path, exc_info=exc)


def create_app(
    settings: KbsSettings | None = None,
    *,
    broker: KeyBroker | None = None,
    clock: Callable[[], datetime] = system_clock,
    on_decision: Callable[[Decision], None] | None = None,
    rate_clock: Callable[[], float] | None = None,
) -> FastAPI:
    """The broker app. With ``settings``, the ``get_settings`` dependency is overridden to it.
    With ``settings.mesh_file``, it runs the mesh CA; ``app.state.mesh`` (a
    :class:`~medclave.kbs.mesh_ca.BrokerMesh`) then says how to serve it (mutual TLS)."""
    cfg = settings or get_settings()
    the_broker = broker or build_broker(cfg, clock=clock, on_decision=on_decision)
    mesh = None if cfg.mesh_file is None else BrokerMesh.build(
        the_broker, MeshConfig.load(cfg.mesh_file), cfg.data_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if mesh is not None:
            mesh.start()
        yield
        if mesh is not None:
            mesh.stop()
        if broker is None:  # we opened it, we close it
            the_broker.store.close()

    app = FastAPI(
        title="Medclave key broker",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.broker = the_broker
    app.state.mesh = mesh
    app.state.mesh_issuer = None if mesh is None else mesh.issuer
    # Beside a PostgreSQL store the buckets are shared by every replica (kbs/pg_ratelimit.py).
    app.state.limiter = open_limiter(cfg, the_broker.store, rate_clock)
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(release_router)
    app.include_router(owner_router)
    app.include_router(mesh_router)
    install_error_handlers(app, render=error_response, log_refusal=_log_refusal,
                           route_error=_route_error, log_unexpected=_log_unexpected)
    _instrument(app, the_broker, cfg)
    return app


def _instrument(app: FastAPI, broker: KeyBroker, cfg: KbsSettings) -> None:
    """/healthz, /readyz (store answers, signing key loaded), metrics (key releases by
    outcome, refusals by their real code)."""
    metrics = ServiceMetrics("kbs")

    def decided(decision: Decision) -> None:
        if decision.action == "release":
            metrics.key_release(decision.outcome)

    broker.add_decision_listener(decided)
    health = Health({
        "store": lambda: broker.store.owner_token_hashes("") is not None,
        "signing_key": lambda: bool(broker.signer.key_id),
    })
    instrument(app, service="kbs", health=health, metrics=metrics,
               tracing=Tracing.of("kbs", cfg.tracing, cfg.otlp_endpoint))
