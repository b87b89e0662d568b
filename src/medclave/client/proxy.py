"""The local proxy: plain OpenAI-compatible HTTP on 127.0.0.1 for apps that cannot change.

An unmodified app points its OpenAI client at ``http://127.0.0.1:8080/v1``. The proxy attests
the upstream enclave against the hospital's policy, then forwards each request encapsulated
(the app's bearer token inside), and hands back the decrypted answer, streamed or whole.
``GET /medclave/status`` shows the last verified evidence. It listens on loopback only by
default: between the app and the proxy the traffic is plain.

A body that is not JSON is refused here (400 ``input.malformed``), before anything is attested.
Refusals reach the app as OpenAI-shaped errors (``{"error": {"code": "attestation...."}}``),
with status 502 when the upstream could not be trusted or reached.

Admission (issue 6, the proxy's coarse enforcement point) is off by default, so unmodified local
apps work in the demo; with ``auth_issuer`` and a JWKS set, every request's token and Cedar's
``infer`` on the requested model are checked before anything is attested or encrypted
(:mod:`medclave.client.admission`), and a refusal (401 ``auth.*``, 403 ``auth.forbidden``) never
reaches the enclave. The token is not spent here: it still travels, encapsulated, to the
enclave's authoritative check.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medclave.attestation.policy import load_policy
from medclave.client.admission import AdmissionConfig, ProxyAdmission, build_admission
from medclave.client.session import EnclaveSession, StreamedResponse, summary, system_clock
from medclave.crypto.canonical import load_json
from medclave.errors import InputError, MedclaveError
from medclave.protocol import inference as proto
from medclave.serving import (
    ClosingStreamingResponse,
    ServingSettings,
    StreamEnd,
    install_error_handlers,
    read_limited_body,
    run_server,
)

log = logging.getLogger("medclave.proxy")

MAX_BODY = proto.MAX_INNER_BODY
_PASS_HEADERS = ("content-type", proto.REQUEST_ID_HEADER, proto.RECEIPT_HEADER, "retry-after")


class ProxySettings(BaseSettings, ServingSettings):
    """Network settings (trusted proxies, read deadlines) are :class:`ServingSettings`'."""

    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_PROXY_", extra="forbid", frozen=True)

    upstream: str
    policy_file: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    sim_roots: tuple[str, ...] = ()
    reattest_seconds: int = Field(default=300, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)
    # --- admission (off unless auth_issuer is set) --------------------------------------
    auth_issuer: str | None = None
    auth_jwks_file: Path | None = None
    auth_jwks_url: str | None = None
    auth_audience: str = "medclave"
    auth_tenant: str | None = None  # the hospital this proxy serves (None: the token's own)
    auth_roles: tuple[str, ...] = ("clinician",)  # roles that may call the model
    auth_policies_dir: Path | None = None  # Cedar policies (default: the bundled ones)

    def admission(self) -> AdmissionConfig | None:
        """The admission configuration, or None when admission is off; ``config.invalid`` for
        half a configuration (a JWKS without an issuer, or the reverse)."""
        if self.auth_issuer is None:
            if self.auth_jwks_file is not None or self.auth_jwks_url is not None:
                raise InputError("config.invalid", "a JWKS was given without auth_issuer")
            return None
        return AdmissionConfig(issuer=self.auth_issuer, jwks_file=self.auth_jwks_file,
                               jwks_url=self.auth_jwks_url, audience=self.auth_audience,
                               tenant=self.auth_tenant, roles=self.auth_roles,
                               policies_dir=self.auth_policies_dir)


@lru_cache(maxsize=1)
def get_settings() -> ProxySettings:
    return ProxySettings()  # type: ignore[call-arg]  # from the environment


def session_for(settings: ProxySettings) -> EnclaveSession:
    return EnclaveSession(settings.upstream, load_policy(settings.policy_file),
                          sim_roots=frozenset(settings.sim_roots),
                          reattest_after=timedelta(seconds=settings.reattest_seconds),
                          timeout=settings.timeout_seconds)


router = APIRouter()


def admission_for(settings: ProxySettings) -> ProxyAdmission | None:
    config = settings.admission()
    return None if config is None else build_admission(config, clock=system_clock)


def get_session(request: Request) -> EnclaveSession:
    session: EnclaveSession = request.app.state.session
    return session


SessionDep = Annotated[EnclaveSession, Depends(get_session)]
AuthHeader = Annotated[str | None, Header(alias="authorization")]


async def read_body(request: Request) -> bytes:
    return await read_limited_body(request, MAX_BODY)


BodyDep = Annotated[bytes, Depends(read_body)]


def _wants_stream(body: bytes) -> bool:
    """Whether the request asks for a stream; ``input.malformed`` when the body is not JSON."""
    value = load_json(body, what="the request body")
    return isinstance(value, dict) and value.get("stream") is True


async def _admit(request: Request, method: str, path: str, body: bytes = b"") -> None:
    """Coarse admission, before the session attests or encrypts anything (when it is on)."""
    admission: ProxyAdmission | None = request.app.state.admission
    if admission is not None:
        # In a thread: a JWKS fetch may block.
        await run_in_threadpool(admission.admit, request.headers, method=method, path=path,
                                body=body)


def _drop(stream: StreamedResponse, content: Iterator[bytes], how: StreamEnd) -> None:
    """The app's response is over: an upstream stream it did not read to the end is shut down at
    once, so the enclave sees the client leave (it records the answer and stops the engine)."""
    if how != "ended":
        stream.abort()
    close = getattr(content, "close", None)
    if close is not None:
        # A generator another thread is inside cannot be closed here (ValueError): its read
        # fails on the shut-down connection and it closes itself.
        with contextlib.suppress(ValueError):
            close()


async def _forward(request: Request, session: SessionDep, path: str, body: bytes,
                   authorization: str | None) -> Response:
    await _admit(request, "POST", path, body)
    if _wants_stream(body):
        stream = await run_in_threadpool(session.stream, "POST", path, body=body,
                                         authorization=authorization)
        headers = {k: v for k, v in stream.headers if k in _PASS_HEADERS and k != "content-type"}
        content = stream.iter_content()
        return ClosingStreamingResponse(
            content, lambda how: _drop(stream, content, how), status_code=stream.status,
            media_type=stream.header("content-type") or "text/event-stream", headers=headers)
    answer = await run_in_threadpool(session.request, "POST", path, body=body,
                                     authorization=authorization)
    headers = {k: v for k, v in answer.headers if k in _PASS_HEADERS and k != "content-type"}
    return Response(answer.body, status_code=answer.status,
                    media_type=answer.header("content-type") or "application/json",
                    headers=headers)


@router.post(proto.CHAT_PATH)
async def chat_completions(request: Request, session: SessionDep, body: BodyDep,
                           authorization: AuthHeader = None) -> Response:
    return await _forward(request, session, proto.CHAT_PATH, body, authorization)


@router.post(proto.COMPLETIONS_PATH)
async def completions(request: Request, session: SessionDep, body: BodyDep,
                      authorization: AuthHeader = None) -> Response:
    return await _forward(request, session, proto.COMPLETIONS_PATH, body, authorization)


@router.get(proto.MODELS_PATH)
async def models(request: Request, session: SessionDep,
                 authorization: AuthHeader = None) -> Response:
    await _admit(request, "GET", proto.MODELS_PATH)
    answer = await run_in_threadpool(session.request, "GET", proto.MODELS_PATH,
                                     authorization=authorization)
    return Response(answer.body, status_code=answer.status,
                    media_type=answer.header("content-type") or "application/json")


@router.get("/medclave/status")
async def status(session: SessionDep) -> dict[str, Any]:
    """The last verified evidence: platform, measurement, model digest, when."""
    enclave = session.enclave
    return {"upstream_verified": enclave is not None, "enclave": dict(summary(enclave))}


def _error(exc: MedclaveError) -> JSONResponse:
    family = exc.code.split(".", 1)[0]
    untrusted = family in ("attestation", "policy", "crypto", "protocol", "audit")
    status = 502 if untrusted or exc.status >= 500 else exc.status
    kind = "medclave_refusal" if untrusted else "invalid_request_error"
    # RFC 6750 §3: a 401 names the scheme the client should retry with.
    headers = {"WWW-Authenticate": 'Bearer realm="medclave"'} if status == 401 else None
    return JSONResponse({"error": {"message": exc.public_message if untrusted else exc.detail,
                                   "type": kind, "param": None, "code": exc.code}},
                        status_code=status, headers=headers)


def _log_refusal(request: Request, exc: MedclaveError) -> None:
    log.warning("refused %s %s: %s", request.method, request.url.path, exc.code)


def _route_error(status: int) -> JSONResponse:
    """An unknown route (404) or method (400), answered as the enclave answers them."""
    response = _error(InputError("input.malformed", "no such route"))
    response.status_code = 404 if status == 404 else 400
    return response


def _log_unexpected(request: Request, exc: Exception) -> None:
    # The type only: an exception's message or traceback may carry request content (PHI).
    log.error("internal error on %s %s: %s", request.method, request.url.path,
              type(exc).__name__)


def create_proxy_app(session: EnclaveSession, admission: ProxyAdmission | None = None
                     ) -> FastAPI:
    """The proxy app; ``admission`` None lets every local app through to the enclave's check."""
    app = FastAPI(title="Medclave proxy", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.session = session
    app.state.admission = admission
    app.include_router(router)
    install_error_handlers(app, render=_error, log_refusal=_log_refusal,
                           route_error=_route_error, log_unexpected=_log_unexpected)
    return app


def serve(settings: ProxySettings) -> None:
    admission = admission_for(settings)
    if admission is None:
        log.warning("proxy admission is off: every local app's request goes to the enclave, "
                    "which still authenticates and authorizes it")
    session = session_for(settings)
    try:
        run_server(create_proxy_app(session, admission), settings, host=settings.host,
                   port=settings.port, log_level="info")
    finally:
        session.close()
        if admission is not None:
            admission.close()
