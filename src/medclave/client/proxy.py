"""The local proxy: plain OpenAI-compatible HTTP on 127.0.0.1 for apps that cannot change.

An unmodified app points its OpenAI client at ``http://127.0.0.1:8080/v1``. The proxy attests
the upstream enclave against the hospital's policy, then forwards each request encapsulated
(a credential for the caller inside), and hands back the decrypted answer, streamed or whole.
``GET /medclave/status`` shows the last verified evidence. It listens on loopback only by
default: between the app and the proxy the traffic is plain. With ``replicas`` set, ``upstream``
is a load balancer in front of several enclave replicas, each attested on its own, and requests
are routed across the verified ones (:mod:`medclave.client.replicas`, docs/scaling-out.md).

Credentials (issue 10). With an IdP client configured (``idp_token_url``, ``idp_client_id`` and
its secret), the proxy manages tokens for the apps behind it (:mod:`medclave.client.credentials`):
an app sends a local API key (``medclave proxy keys add``, :mod:`medclave.client.apikeys`) as its
OpenAI ``api_key``, or reaches the proxy through the hospital's SSO, whose identity header
(``identity_header``) is believed only from ``trusted_proxies``; the proxy asks the IdP for a
short-lived token for that user (token exchange) and keeps it fresh, so one API key serves an app
for hours. An app's own JWT is forwarded as it came; an app's own DPoP-bound token is checked
here and re-bound to the proxy's DPoP key (the design is in :mod:`medclave.client.callers`).

Errors. Every answer that is not a success is an OpenAI error object (``{"error": {"message",
"type", "param", "code"}}``, ``code`` the Medclave code) with the right status: 400, 401 (with
``WWW-Authenticate``, RFC 6750 §3), 403, 404, 405 (with ``Allow``), 413, 429 (with
``Retry-After``), and 502 when the upstream could not be trusted or reached. A body that is not
JSON is refused here (400 ``input.malformed``), before anything is attested. At most
``max_in_flight`` requests are served at once; past that, 429 ``client.busy``.

Admission (issue 6, the proxy's coarse enforcement point) is off by default, so unmodified local
apps work in the demo; with ``auth_issuer`` and a JWKS set, every request's token (the one the
proxy will send) and Cedar's ``infer`` on the requested model are checked before anything is
attested or encrypted (:mod:`medclave.client.admission`), and a refusal (401 ``auth.*``, 403
``auth.forbidden``) never reaches the enclave, which still makes its own, authoritative check.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from medclave.client import triage_page
from medclave.client.admission import ProxyAdmission
from medclave.client.callers import Callers
from medclave.client.proxy_routes import CHALLENGE, PEER, Slots, router
from medclave.client.proxy_settings import (
    ProxySettings,
    admission_for,
    callers_for,
    mesh_for,
    session_for,
    watch_for,
)
from medclave.client.replicas import Enclaves
from medclave.client.scribe_page import mount_scribe_page
from medclave.errors import InputError, MedclaveError
from medclave.ops import lifecycle
from medclave.ops.health import Health
from medclave.ops.http import instrument, note_refusal
from medclave.ops.logs import configure_logging
from medclave.ops.metrics import ServiceMetrics
from medclave.ops.tracing import Tracing
from medclave.serving import install_error_handlers
from medclave.util.clock import system_clock

# The settings and what is built from them live in proxy_settings, the routes (which hold no
# state: the app below gives them the session and the limits) in proxy_routes. ProxySettings
# is named here too, where apps configuring the proxy have always found it.
__all__ = ["ProxySettings", "create_proxy_app", "serve"]

log = logging.getLogger("medclave.proxy")


def _kind(code: str, status: int) -> str:
    """The OpenAI error ``type`` for a status (the SDK picks its exception by the status)."""
    if code.split(".", 1)[0] in ("attestation", "policy", "crypto", "protocol", "audit"):
        return "medclave_refusal"
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                         else "invalid_request_error")


def _error(exc: MedclaveError, *, headers: dict[str, str] | None = None) -> JSONResponse:
    family = exc.code.split(".", 1)[0]
    untrusted = family in ("attestation", "policy", "crypto", "protocol", "audit")
    status = 502 if untrusted or exc.status >= 500 else exc.status
    out = dict(headers or {})
    if status == 401:
        # RFC 6750 §3: the scheme to retry with; §3.1: invalid_token when one was presented.
        out["WWW-Authenticate"] = (CHALLENGE if exc.code == "auth.token_missing"
                                   else f'{CHALLENGE}, error="invalid_token"')
    if status == 429:
        out["Retry-After"] = str(int(exc.context.get("retry_after", 1)))  # RFC 9110 §10.2.3
    message = exc.public_message if untrusted or status >= 500 else exc.detail
    return JSONResponse({"error": {"message": message, "type": _kind(exc.code, status),
                                   "param": None, "code": exc.code}},
                        status_code=status, headers=out or None)


def _log_refusal(request: Request, exc: MedclaveError) -> None:
    note_refusal(request, exc.code)
    log.warning("refused %s %s: %s", request.method, request.url.path, exc.code)


def _route_error(status: int) -> JSONResponse:
    """Any other framework error (the handler below answers 404 and 405)."""
    return _error(InputError("input.malformed", "the request is malformed"))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Unknown route 404, known route with another method 405 (with ``Allow``, RFC 9110
    §15.5.6), in the OpenAI shape."""
    status = getattr(exc, "status_code", 400)
    if status == 404:
        return _error(InputError("input.no_route", f"no route {request.url.path[:128]}"))
    if status == 405:
        allow = (getattr(exc, "headers", None) or {}).get("Allow")
        return _error(InputError("input.method_not_allowed",
                                 f"{request.url.path[:128]} does not take {request.method}"),
                      headers={"Allow": allow} if allow else None)
    return _route_error(status)


def _log_unexpected(request: Request, exc: Exception) -> None:
    # The type only: an exception's message or traceback may carry request content (PHI).
    log.error("internal error on %s %s: %s", request.method, request.url.path,
              type(exc).__name__)


class _RecordPeer:
    """Outermost: keeps the TCP peer in the scope before forwarded headers rewrite the client
    (the identity header is believed on the peer's address, never on X-Forwarded-For)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            scope[PEER] = client[0] if client else None
        await self.app(scope, receive, send)


def create_proxy_app(session: Enclaves, admission: ProxyAdmission | None = None, *,
                     callers: Callers | None = None, trusted_proxies: tuple[str, ...] = (),
                     max_in_flight: int = 256, triage_signin_url: str | None = None,
                     tracing: Tracing | None = None) -> FastAPI:
    """The proxy app; ``admission`` None lets every local app through to the enclave's check;
    ``callers`` None forwards each app's own token (no IdP client). ``trusted_proxies``: as
    :class:`ServingSettings`' (serve the app with none given to uvicorn itself)."""
    app = FastAPI(title="Medclave proxy", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.session = session
    app.state.admission = admission
    app.state.callers = callers or Callers(credentials=None, keys=None)
    app.state.slots = Slots(max_in_flight)
    app.state.triage_signin_url = triage_signin_url  # the triage page (client/triage_page.py)
    app.include_router(router)
    app.include_router(triage_page.router)
    mount_scribe_page(app)
    install_error_handlers(app, render=_error, log_refusal=_log_refusal,
                           route_error=_route_error, log_unexpected=_log_unexpected)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _instrument(app, session, tracing)
    if trusted_proxies:
        # uvicorn's own handling, inside the app (added first: it runs after _RecordPeer).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(trusted_proxies))
    app.add_middleware(_RecordPeer)
    return app


def _instrument(app: FastAPI, session: Enclaves, tracing: Tracing | None) -> None:
    """/healthz, /readyz (the upstream enclave attested within the re-attestation interval,
    attesting anew when not), metrics (attestation age, slots in use)."""
    metrics = ServiceMetrics("proxy")

    def attestation_age() -> float | None:
        enclave = session.enclave
        return None if enclave is None else (system_clock() - enclave.verified_at
                                             ).total_seconds()

    metrics.gauge("medclave_attestation_age_seconds",
                  "Seconds since the upstream enclave's evidence was last verified",
                  attestation_age)
    instrument(app, service="proxy", metrics=metrics, tracing=tracing,
               health=Health({"attestation": lambda: session.current() is not None}))


def serve(settings: ProxySettings) -> None:
    configure_logging("proxy", level=settings.log_level, fmt=settings.log_format)
    admission = admission_for(settings)
    if admission is None:
        log.warning("proxy admission is off: every local app's request goes to the enclave, "
                    "which still authenticates and authorizes it")
    callers = callers_for(settings)
    mesh = mesh_for(settings)
    session = session_for(settings, mesh)
    watch = watch_for(settings, session)
    watch.start()
    try:
        app = create_proxy_app(session, admission, callers=callers,
                               trusted_proxies=settings.trusted_proxies,
                               max_in_flight=settings.max_in_flight,
                               triage_signin_url=settings.triage_signin_url,
                               tracing=Tracing.of("proxy", settings.tracing,
                                                  settings.otlp_endpoint))
        lifecycle.serve(app, settings.serving(), settings, host=settings.host,
                        port=settings.port)
    finally:
        watch.stop()
        session.close()
        if mesh is not None:
            mesh.close()
        callers.close()
        if admission is not None:
            admission.close()
