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

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from medclave.attestation import load_policy
from medclave.attestation.collateral import load_collateral
from medclave.auth.replay import ReplayCache, open_replay_cache
from medclave.client.admission import AdmissionConfig, ProxyAdmission, build_admission
from medclave.client.apikeys import open_api_keys
from medclave.client.callers import Callers, Upstream
from medclave.client.continuous import TrustWatch
from medclave.client.credentials import Credentials, IdpClientConfig
from medclave.client.replicas import Enclaves, ReplicaSet, replica_names
from medclave.client.scribe_page import mount_scribe_page
from medclave.client.session import Abort, EnclaveSession, InnerResponse, StreamedResponse, summary
from medclave.crypto.canonical import load_json
from medclave.errors import ClientError, InputError, MedclaveError
from medclave.mesh.tls import MeshTls
from medclave.mesh.workload import WorkloadConfig, WorkloadMesh
from medclave.ops import lifecycle
from medclave.ops.health import Health
from medclave.ops.http import instrument, note_refusal
from medclave.ops.logs import configure_logging
from medclave.ops.metrics import ServiceMetrics
from medclave.ops.settings import OpsSettings
from medclave.ops.tracing import Tracing
from medclave.postgres.pool import store_setting
from medclave.protocol import inference as proto
from medclave.serving import (
    ClosingStreamingResponse,
    ServingSettings,
    StreamEnd,
    install_error_handlers,
    read_limited_body,
    run_sync_until_gone,
)
from medclave.util.clock import system_clock

log = logging.getLogger("medclave.proxy")

MAX_BODY = proto.MAX_INNER_BODY
DEFAULT_DATA_DIR = Path(".medclave/proxy")
_PASS_HEADERS = ("content-type", proto.REQUEST_ID_HEADER, proto.RECEIPT_HEADER, "retry-after",
                 "www-authenticate")
# The end of an OpenAI event stream: chat and completions, or the Responses API's last events.
_LAST_EVENTS = (b"data: [DONE]", b"event: response.completed", b"event: response.incomplete",
                b"event: response.failed")
_PEER = "medclave.peer"  # the ASGI scope key holding the TCP peer (see _RecordPeer)
# RFC 6750 §3: the scheme a client may retry with (an OpenAI app sends Bearer).
_CHALLENGE = 'Bearer realm="medclave"'


class ProxySettings(BaseSettings, ServingSettings, OpsSettings):
    """Network settings (trusted proxies, read deadlines) are :class:`ServingSettings`';
    metrics, logs, drain and tracing :class:`~medclave.ops.settings.OpsSettings`'."""

    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_PROXY_", extra="forbid", frozen=True)

    upstream: str
    policy_file: Path
    # Enclave replicas behind a load balancer at ``upstream`` (docs/scaling-out.md): each is
    # attested on its own and requests are routed across the verified ones; empty: one enclave.
    replicas: tuple[str, ...] = Field(default=(), max_length=64)
    replica_down_seconds: float = Field(default=5.0, gt=0, le=3600)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    sim_roots: tuple[str, ...] = ()
    reattest_seconds: int = Field(default=300, ge=1)
    # Continuous trust (client/continuous.py): the relying party's collateral (TCB baseline,
    # revoked measurements); it and policy_file are re-read every trust_poll_seconds and a
    # change re-attests at once. A failed re-attestation is retried every
    # reattest_retry_seconds; until one passes, requests are refused.
    collateral_file: Path | None = None
    trust_poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    reattest_retry_seconds: int = Field(default=30, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    data_dir: Path = DEFAULT_DATA_DIR  # API keys (apikeys.db, unless store is PostgreSQL)
    # A postgresql:// URL shared by the proxy's replicas: API keys live there, and an app's
    # DPoP proof is accepted once across all of them (docs/scaling-out.md). None: API keys in
    # data_dir, replay caches in this process's memory.
    store: str | None = None
    store_allow_remote: bool = False
    # Attested micro-segmentation (docs/continuous-trust.md): the proxy's mesh file (identity,
    # segmentation policy, mesh CA, where its evidence comes from). Set, the proxy reaches the
    # enclave over mutual TLS only (upstream is then https://); unset, nothing changes.
    mesh_file: Path | None = None
    # --- credentials at the hospital's IdP (off unless idp_token_url is set) -----------------
    idp_token_url: str | None = None
    idp_client_id: str | None = None
    idp_client_secret: SecretStr | None = None
    idp_audience: str = "medclave"
    idp_dpop: bool = True
    identity_header: str | None = None  # e.g. X-Forwarded-User, from trusted_proxies only
    identity_roles: tuple[str, ...] = ()  # roles asked for header users (none: the directory's)
    # --- admission (off unless auth_issuer is set) --------------------------------------
    auth_issuer: str | None = None
    auth_jwks_file: Path | None = None
    auth_jwks_url: str | None = None
    auth_audience: str = "medclave"
    auth_tenant: str | None = None  # the hospital this proxy serves (None: the token's own)
    auth_roles: tuple[str, ...] = ("clinician",)  # roles that may call the model
    auth_policies_dir: Path | None = None  # Cedar policies (default: the bundled ones)
    # The triage page's development sign-in: the IdP token endpoint its password grant goes to.
    triage_signin_url: str | None = None

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        return None if value is None else store_setting(value, names=())

    def replay_cache(self, scope: str) -> ReplayCache:
        """The DPoP replay cache of one checker in this proxy (``store``)."""
        return open_replay_cache(self.store, scope=scope, max_entries=100_000,
                                 allow_remote=self.store_allow_remote)

    @field_validator("replicas")
    @classmethod
    def _replica_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return replica_names(value)

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

    def idp_client(self) -> IdpClientConfig | None:
        """The IdP client, or None when the proxy manages no credentials; ``config.invalid``
        for half a configuration."""
        parts = (self.idp_token_url, self.idp_client_id, self.idp_client_secret)
        if all(p is None for p in parts):
            if self.identity_header is not None:
                raise InputError("config.invalid", "identity_header needs the IdP client")
            return None
        if any(p is None for p in parts):
            raise InputError("config.invalid", "the IdP client needs idp_token_url, "
                             "idp_client_id and idp_client_secret")
        assert self.idp_token_url and self.idp_client_id and self.idp_client_secret
        return IdpClientConfig(token_url=self.idp_token_url, client_id=self.idp_client_id,
                               client_secret=self.idp_client_secret.get_secret_value(),
                               audience=self.idp_audience, dpop=self.idp_dpop)

    def serving(self) -> ServingSettings:
        """What uvicorn is given: forwarded headers are handled inside the app (so that the TCP
        peer stays known for the identity header), never by uvicorn as well."""
        return ServingSettings(header_timeout_seconds=self.header_timeout_seconds,
                               body_timeout_seconds=self.body_timeout_seconds,
                               keep_alive_seconds=self.keep_alive_seconds)


@lru_cache(maxsize=1)
def get_settings() -> ProxySettings:
    return ProxySettings()  # type: ignore[call-arg]  # from the environment


def mesh_for(settings: ProxySettings) -> WorkloadMesh | None:
    """The proxy's workload certificate (attested micro-segmentation), when configured."""
    if settings.mesh_file is None:
        return None
    if not settings.upstream.startswith("https://"):
        # the mesh's client context is used only for https: plain http would bypass it
        raise InputError("config.invalid", "in a mesh, the upstream enclave is https://")
    config = WorkloadConfig.load(settings.mesh_file)
    return WorkloadMesh(config, config.attester())


def session_for(settings: ProxySettings, mesh: WorkloadMesh | None = None) -> Enclaves:
    """One session to the enclave at ``upstream``, or with ``replicas`` a :class:`ReplicaSet`
    that attests and routes to each replica behind the balancer there."""
    collateral = (load_collateral(settings.collateral_file) if settings.collateral_file
                  else None)
    if settings.replicas:
        return ReplicaSet(settings.upstream, settings.replicas, load_policy(settings.policy_file),
                          sim_roots=frozenset(settings.sim_roots),
                          reattest_after=timedelta(seconds=settings.reattest_seconds),
                          retry_failed_after=timedelta(seconds=settings.reattest_retry_seconds),
                          down_after_failure=timedelta(seconds=settings.replica_down_seconds),
                          timeout=settings.timeout_seconds, collateral=collateral,
                          tls_for=None if mesh is None else replica_tls(mesh.tls))
    return EnclaveSession(settings.upstream, load_policy(settings.policy_file),
                          sim_roots=frozenset(settings.sim_roots),
                          reattest_after=timedelta(seconds=settings.reattest_seconds),
                          retry_failed_after=timedelta(seconds=settings.reattest_retry_seconds),
                          timeout=settings.timeout_seconds, collateral=collateral,
                          tls=None if mesh is None else mesh.tls.client_context("enclave"))


def replica_tls(tls: MeshTls) -> Callable[[str], ssl.SSLContext]:
    """Each replica's mutual TLS in a mesh: the server name a TLS-passthrough balancer routes
    on (``ops/balancer.py``), and the one identity it may present,
    ``medclave://TENANT/enclave/NAME`` (docs/scaling-out.md)."""
    return lambda name: tls.client_context("enclave", server_name=proto.replica_server_name(name),
                                           expect_name=name)


def watch_for(settings: ProxySettings, session: Enclaves) -> TrustWatch:
    return TrustWatch(session, policy_file=settings.policy_file,
                      collateral_file=settings.collateral_file, poll=settings.trust_poll_seconds)


def admission_for(settings: ProxySettings) -> ProxyAdmission | None:
    config = settings.admission()
    return None if config is None else build_admission(
        config, clock=system_clock, replay=settings.replay_cache("proxy-admission"))


def callers_for(settings: ProxySettings) -> Callers:
    """The caller mapping from the settings (an IdP client, API keys, the identity header)."""
    client = settings.idp_client()
    credentials = None if client is None else Credentials(client)
    keys = None if credentials is None else open_api_keys(
        settings.data_dir, settings.store, allow_remote=settings.store_allow_remote)
    return Callers(credentials=credentials, keys=keys, identity_header=settings.identity_header,
                   trusted_proxies=settings.trusted_proxies,
                   header_roles=settings.identity_roles,
                   replay=settings.replay_cache("proxy-apps"))


router = APIRouter()


def get_session(request: Request) -> Enclaves:
    session: Enclaves = request.app.state.session
    return session


SessionDep = Annotated[Enclaves, Depends(get_session)]


async def read_body(request: Request) -> bytes:
    return await read_limited_body(request, MAX_BODY)


BodyDep = Annotated[bytes, Depends(read_body)]


async def read_audio_body(request: Request) -> bytes:
    return await read_limited_body(request, proto.MAX_AUDIO_BODY)


AudioBodyDep = Annotated[bytes, Depends(read_audio_body)]


class _Slots:
    """At most ``limit`` requests in flight (a stream holds its slot until it ends)."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self._free <= 0:
                raise ClientError("client.busy", "too many requests in flight", retry_after=1)
            self._free -= 1

    def give(self) -> None:
        with self._lock:
            self._free += 1


def _wants_stream(body: bytes) -> bool:
    """Whether the request asks for a stream; ``input.malformed`` when the body is not JSON."""
    value = load_json(body, what="the request body")
    return isinstance(value, dict) and value.get("stream") is True


async def _upstream(request: Request, method: str, path: str, body: bytes = b"") -> Upstream:
    """The credential for the enclave, then coarse admission of it, before the session attests
    or encrypts anything. In a thread: the IdP or a JWKS may be asked."""
    callers: Callers = request.app.state.callers
    upstream = await run_in_threadpool(callers.upstream, request.headers,
                                       peer=request.scope.get(_PEER), method=method,
                                       url=str(request.url), path=path)
    admission: ProxyAdmission | None = request.app.state.admission
    if admission is not None:
        await run_in_threadpool(admission.admit, upstream.headers(), method=method, path=path,
                                body=body)
    return upstream


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



def _answer_headers(pairs: Any, status: int, replica: str | None = None) -> dict[str, str]:
    headers = {k: v for k, v in pairs if k in _PASS_HEADERS and k != "content-type"}
    if replica is not None:
        headers[proto.REPLICA_HEADER] = replica  # which replica served it (for the app's logs)
    if status == 401 and "www-authenticate" not in headers:
        headers["www-authenticate"] = f'{_CHALLENGE}, error="invalid_token"'
    return headers


async def _send(request: Request, session: Enclaves, method: str, path: str,
                body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """One request forwarded encapsulated; ``headers``: more inner headers (a sealed
    conversation's share), which exist only inside the encapsulation upstream."""
    slots: _Slots = request.app.state.slots
    slots.take()
    handed_over = False
    try:
        upstream = await _upstream(request, method, path, body)
        if method == "POST" and _wants_stream(body):
            stream = await run_in_threadpool(session.stream, method, path, body=body,
                                             authorization=upstream.authorization,
                                             dpop=upstream.dpop, headers=headers)

            def content() -> Iterator[bytes]:
                # Each piece leaves as soon as it arrives (no look-ahead: a held piece would
                # wait for the next token). The slot is freed before the stream's last event
                # leaves, so an app that has read the whole answer and asks again at once never
                # finds its own stream still counted.
                released = False
                try:
                    for piece in stream.iter_content():
                        if not released and any(e in piece for e in _LAST_EVENTS):
                            released = True
                            slots.give()
                        yield piece
                finally:
                    stream.close()  # an app that left: the upstream stream closes now
                    if not released:
                        slots.give()

            body_iter = content()
            handed_over = True
            # The app leaving shuts the upstream stream down at once (_drop), so the enclave
            # records the answer and stops the engine.
            return ClosingStreamingResponse(
                body_iter, lambda how: _drop(stream, body_iter, how), status_code=stream.status,
                media_type=stream.header("content-type") or "text/event-stream",
                headers=_answer_headers(stream.headers, stream.status, stream.replica))
        # An app that leaves before its whole answer is ready: the upstream request is dropped,
        # so the enclave stops generating within a token (and records the request).
        abort = Abort()
        answers: list[InnerResponse] = []
        await run_sync_until_gone(request, lambda: answers.append(session.request(
            method, path, body=body, authorization=upstream.authorization, dpop=upstream.dpop,
            abort=abort, headers=headers)), on_gone=abort)
        answer = answers[0]
        return Response(answer.body, status_code=answer.status,
                        media_type=answer.header("content-type") or "application/json",
                        headers=_answer_headers(answer.headers, answer.status, answer.replica))
    finally:
        if not handed_over:
            slots.give()


@router.post(proto.CHAT_PATH)
async def chat_completions(request: Request, session: SessionDep, body: BodyDep) -> Response:
    return await _send(request, session, "POST", proto.CHAT_PATH, body)


@router.post(proto.COMPLETIONS_PATH)
async def completions(request: Request, session: SessionDep, body: BodyDep) -> Response:
    return await _send(request, session, "POST", proto.COMPLETIONS_PATH, body)


@router.post(proto.RESPONSES_PATH)
async def responses(request: Request, session: SessionDep, body: BodyDep) -> Response:
    return await _send(request, session, "POST", proto.RESPONSES_PATH, body)


async def _upload(request: Request, session: Enclaves, path: str, body: bytes) -> Response:
    """A large body (audio, or a scribe request that may carry it) in chunked OHTTP, to an
    enclave whose verified runtime states ``audio_retention: none`` (EnclaveSession.upload)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/json")):
        raise InputError("input.malformed", "send multipart/form-data or application/json")
    slots: _Slots = request.app.state.slots
    slots.take()
    try:
        # Admission reads the model a JSON body names; a form names none (Cedar sees it as
        # unnamed, as it would any request that does not say).
        upstream = await _upstream(request, "POST", path,
                                   body if content_type.startswith("application/json") else b"")
        answer = await run_in_threadpool(session.upload, path, body=body,
                                         content_type=content_type,
                                         authorization=upstream.authorization,
                                         dpop=upstream.dpop, audio=True)
    finally:
        slots.give()
    return Response(answer.body, status_code=answer.status,
                    media_type=answer.header("content-type") or "application/json",
                    headers=_answer_headers(answer.headers, answer.status, answer.replica))


@router.post(proto.TRANSCRIPTIONS_PATH)
async def transcriptions(request: Request, session: SessionDep, body: AudioBodyDep) -> Response:
    return await _upload(request, session, proto.TRANSCRIPTIONS_PATH, body)


@router.post(proto.SCRIBE_PATH)
async def scribe(request: Request, session: SessionDep, body: AudioBodyDep) -> Response:
    return await _upload(request, session, proto.SCRIBE_PATH, body)


@router.post(proto.EMBEDDINGS_PATH)
async def embeddings(request: Request, session: SessionDep, body: BodyDep) -> Response:
    return await _send(request, session, "POST", proto.EMBEDDINGS_PATH, body)


@router.post(proto.RECORDS_PATH)
async def records(request: Request, session: SessionDep, body: BodyDep) -> Response:
    """FHIR records to ingest, encapsulated like every request (docs/retrieval.md)."""
    return await _send(request, session, "POST", proto.RECORDS_PATH, body)


@router.post(proto.SEARCH_PATH)
async def search(request: Request, session: SessionDep, body: BodyDep) -> Response:
    return await _send(request, session, "POST", proto.SEARCH_PATH, body)


@router.get(proto.MODELS_PATH)
async def models(request: Request, session: SessionDep) -> Response:
    return await _send(request, session, "GET", proto.MODELS_PATH)


@router.get(proto.MODELS_PATH + "/{model_id:path}")
async def model(request: Request, session: SessionDep, model_id: str) -> Response:
    return await _send(request, session, "GET", proto.model_path(model_id))


@router.get("/medclave/status")
async def status(session: SessionDep) -> dict[str, Any]:
    """The last verified evidence: platform, measurement, model digest, when; and ``trust``:
    whether the latest (re-)attestation passed, and if not, its code and why."""
    enclave = session.enclave
    out: dict[str, Any] = {"upstream_verified": enclave is not None,
                           "enclave": dict(summary(enclave)), "trust": session.trust_state()}
    if isinstance(session, ReplicaSet):
        out["replicas"] = session.replicas()
    return out


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
        out["WWW-Authenticate"] = (_CHALLENGE if exc.code == "auth.token_missing"
                                   else f'{_CHALLENGE}, error="invalid_token"')
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
            scope[_PEER] = client[0] if client else None
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
    app.state.slots = _Slots(max_in_flight)
    app.state.triage_signin_url = triage_signin_url  # the triage page (client/triage_page.py)
    app.include_router(router)
    from medclave.client import triage_page  # its routes use this module's _send

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
