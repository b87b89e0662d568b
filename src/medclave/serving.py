"""What every HTTP service (key broker, enclave, proxy, IdP) shares: how it meets the network
(:class:`ServingSettings`, :func:`run_server`), bounded request bodies, the error handlers that
keep internal detail out of responses. (Background servers for the demo, tests and benchmarks
live in :mod:`medclave.background`, outside the library's import path.)

For the services only: attestation, audit, crypto and protocol import no web framework, so they
never import this module.

Forwarded headers. No service believes ``X-Forwarded-For`` or ``X-Forwarded-Proto`` unless its
operator lists the proxies that set them (``trusted_proxies``: IP addresses or CIDR networks,
empty by default). Empty, uvicorn's proxy-header handling is off and the TCP peer is the client;
set, uvicorn honours the headers only on connections from those addresses, and takes as the
client the nearest address in ``X-Forwarded-For`` that is not a listed proxy (each proxy appends
the peer it saw, so only the part the listed proxies wrote is believed). uvicorn's own default
(on, trusting 127.0.0.1) is never used: on loopback it made every caller a "proxy" that could
name any client address to the rate limits and the decision log.

Read deadlines. uvicorn 0.49's h11 protocol times out only the idle gap between a response and
the next request (``timeout_keep_alive``): a connection that sends nothing, half a request head
or half a body is held forever. :class:`GuardedH11Protocol` adds the two deadlines it lacks:
the whole request head must arrive within ``header_timeout_seconds`` of its first byte (or of the
connection), and a body may not stall for ``body_timeout_seconds`` between reads; past either the
connection is closed. The head is also bounded in size (h11's 16 KiB incomplete-event limit).

Mutual TLS (attested micro-segmentation, docs/continuous-trust.md). With a
:class:`MeshServing`, a service listens with its workload's rotating mesh context and checks
each connection's peer identity once, right after the handshake and before any request is
read (``GuardedH11Protocol.connection_made``); a refused peer is answered its ``mesh.*`` code
on every request except on the service's open paths, and a route reads the caller's verified
identity with :func:`mesh_peer`.

:class:`ClosingStreamingResponse` streams a body from a blocking iterator and closes its source
however the response ends, the client leaving included (the enclave records a streamed answer
then; the proxy drops its upstream stream, so the enclave learns of it).
:func:`run_sync_until_gone` does the same for the work before a response: it runs blocking work
on a thread and says when the client leaves meanwhile (the enclave then stops the generation of
a whole answer nobody waits for any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from medclave.errors import InputError, MedclaveError, MeshError, ServiceError
from medclave.mesh.certs import PeerCert
from medclave.mesh.tls import MeshTls

log = logging.getLogger("medclave.serving")

# h11's default bound on an incomplete event (a request head still arriving), stated here so it is
# a decision rather than an accident: a head larger than this is answered 400 and closed.
MAX_HEAD_BYTES: Final = 16 * 1024

RenderError = Callable[[MedclaveError], JSONResponse]
LogRefusal = Callable[[Request, MedclaveError], None]
LogUnexpected = Callable[[Request, Exception], None]


class ServingSettings(BaseModel):
    """How a service meets the network. Every service's settings inherit these fields (the
    broker's as ``MEDCLAVE_KBS_TRUSTED_PROXIES`` and so on); the IdP takes them from its flags."""

    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed: IPs or CIDR networks (JSON
    # list in the environment). Empty: none is, the TCP peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    # The request head (request line and headers) must be complete this long after its first
    # byte, or after the connection opened when nothing came.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # A request body may not stall longer than this between two reads.
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # An idle keep-alive connection is closed after this long.
    keep_alive_seconds: int = Field(default=5, ge=1, le=600)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Only IP addresses and networks: uvicorn would keep anything else as a literal (a
        hostname, ``*``) and trust it silently, so anything else is refused here."""
        for item in value:
            try:
                if "/" in item:
                    ipaddress.ip_network(item, strict=True)
                else:
                    ipaddress.ip_address(item)
            except ValueError as exc:
                raise ValueError(f"trusted proxy {item!r} is not an IP address or network: "
                                 f"{exc}") from exc
        return value


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with ``input.too_large`` past ``limit`` bytes before it is all
    read: a declared Content-Length over the limit before the first byte (one that is not ASCII
    digits is ``input.malformed``), a chunked body as soon as it grows past the limit; a body the
    client does not finish is ``input.incomplete``."""
    declared = request.headers.get("content-length")
    # isascii: "²".isdigit() is True but int("²") raises; only ASCII digits are a length.
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise InputError("input.malformed", "Content-Length is not a decimal number")
    if declared is not None and int(declared) > limit:
        raise InputError("input.too_large", f"request body over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise InputError("input.too_large", f"request body over {limit} bytes")
    except ClientDisconnect as exc:
        # The client went away (or stalled past the body deadline and was cut off): a refusal
        # like any other, one log line with its code, not an internal error with a traceback.
        raise InputError("input.incomplete", f"the client left after {len(body)} body bytes"
                         ) from exc
    return bytes(body)


def public_response(exc: MedclaveError) -> JSONResponse:
    """``{"error": {"code", "message"}}`` with the catalogue status and public message only."""
    return JSONResponse(exc.to_public(), status_code=exc.status)


def install_refusal_handler(app: FastAPI, *, render: RenderError, log_refusal: LogRefusal) -> None:
    """Answer every :class:`MedclaveError` as ``render`` shapes it, after ``log_refusal``."""

    async def refusal(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MedclaveError)
        log_refusal(request, exc)
        return render(exc)

    app.add_exception_handler(MedclaveError, refusal)


def install_error_handlers(
    app: FastAPI,
    *,
    log_refusal: LogRefusal,
    route_error: Callable[[int], JSONResponse],
    log_unexpected: LogUnexpected,
    render: RenderError = public_response,
) -> None:
    """No framework body and no traceback ever leaves the service: a :class:`MedclaveError` is
    rendered by ``render``; a request FastAPI cannot validate is ``input.malformed``; an unknown
    route or method answers ``route_error(status)``; anything else is ``internal`` (500), its
    detail only where ``log_unexpected`` puts it."""
    install_refusal_handler(app, render=render, log_refusal=log_refusal)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        return render(InputError("input.malformed"))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        return route_error(getattr(exc, "status_code", 500))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log_unexpected(request, exc)
        return render(MedclaveError("internal"))

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


@dataclass(frozen=True)
class MeshServing:
    """Mutual TLS for a service (docs/continuous-trust.md, "Attested micro-segmentation"):
    the workload's :class:`~medclave.mesh.tls.MeshTls`, and the path prefixes a peer without an
    allowed identity may still reach (a broker's certificate bootstrap; empty: none, and a
    client certificate is required by the handshake itself)."""

    tls: MeshTls
    open_paths: tuple[str, ...] = ()


# The ASGI scope key under which a mesh service finds its caller's verified identity.
MESH_PEER: Final = "medclave.mesh_peer"


class _MeshGate:
    """One connection's app: the peer was checked once, at the handshake (the protocol's
    ``connection_made``); a refused peer gets its code on every request, except on the open
    paths, which see its identity when its certificate is current and not revoked (a proxy
    reading its deny list from the CA), else none."""

    def __init__(self, app: Any, peer: PeerCert | None, refusal: MeshError | None,
                 open_paths: tuple[str, ...]) -> None:
        self._app, self._peer, self._refusal, self._open = app, peer, refusal, open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            is_open = bool(self._open) and str(scope.get("path", "")).startswith(self._open)
            if self._refusal is not None and not is_open:
                refusal = public_response(self._refusal)
                refusal.headers["connection"] = "close"
                await refusal(scope, receive, send)
                return
            scope[MESH_PEER] = self._peer  # None: no identity (open paths only)
        await self._app(scope, receive, send)


def mesh_peer(request: Request) -> PeerCert | None:
    """The caller's verified workload identity, when the service runs mutual TLS."""
    peer = request.scope.get(MESH_PEER)
    return peer if isinstance(peer, PeerCert) else None


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the read deadlines it lacks (see the module docstring).

    uvicorn arms its keep-alive timer only after a response; nothing bounds the wait for a
    request. This arms one deadline per connection state, as h11 reports it after every read:
    ``IDLE`` (a request head is due) gets the head deadline, fixed from the first byte of that
    head so trickling bytes does not extend it; ``SEND_BODY`` gets the body deadline, renewed by
    every read (a stall bound, not a rate); any other state (request read, response under way)
    none. While uvicorn has paused reading because the app has not consumed the body yet, the
    stall is the app's, not the client's, and the body deadline waits.
    """

    def __init__(self, config: uvicorn.Config, server_state: ServerState,
                 app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
                 ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        serving = config.serving if isinstance(config, ServiceConfig) else ServingSettings()
        self._timeouts = {"head": serving.header_timeout_seconds,
                          "body": serving.body_timeout_seconds}
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting = ""  # "head", "body" or "" (no deadline armed)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        mesh = self.config.mesh if isinstance(self.config, ServiceConfig) else None
        if mesh is not None:
            # asyncio calls this after the TLS handshake: the peer's certificate chain has
            # been verified against the mesh CA; its identity is checked here, before any
            # request of this connection is read.
            peer: PeerCert | None = None
            refusal: MeshError | None = None
            tls = transport.get_extra_info("ssl_object")
            der = tls.getpeercert(binary_form=True) if tls is not None else None
            try:
                peer = mesh.tls.identify(der)
                mesh.tls.allow(peer, inbound=True)
            except MeshError as exc:
                refusal = exc
                log.info("mesh peer refused: %s (%s)", exc.code, exc.detail)
            self.app = _MeshGate(self.app, peer, refusal, mesh.open_paths)
        self._arm("head")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request already buffered may have begun (uvicorn then cancels its own
        # keep-alive timer): its body gets the deadline too. An idle connection is left to the
        # keep-alive timer.
        if self.conn.their_state is not h11.IDLE:
            self._follow()

    def _follow(self) -> None:
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.IDLE:
            if self._awaiting != "head":
                self._arm("head")
        elif state is h11.SEND_BODY:
            self._arm("body")
        else:
            self._disarm()

    def _arm(self, what: str) -> None:
        self._disarm()
        self._awaiting = what
        self._deadline = self.loop.call_later(self._timeouts[what], self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._awaiting = ""

    def _expired(self) -> None:
        what, self._deadline = self._awaiting, None
        if self.transport.is_closing():
            return
        if what == "body" and self.flow.read_paused:
            self._arm("body")
            return
        # Debug: a flood of such connections must not flood the log. A request whose body is
        # cut off here is logged by the service as ``input.incomplete``.
        log.debug("closing a connection: no complete request %s within %.1f s", what,
                  self._timeouts[what])
        self._awaiting = ""
        self.transport.close()


class ServiceConfig(uvicorn.Config):
    """A uvicorn configuration built from :class:`ServingSettings` (:func:`server_config`)."""

    def __init__(self, app: FastAPI, serving: ServingSettings, *,
                 mesh: MeshServing | None = None, **options: Any) -> None:
        self.serving = serving
        self.mesh = mesh
        if mesh is not None:
            # uvicorn's own hook for a caller-built context; it follows certificate rotation.
            options["ssl_context_factory"] = lambda _config, _default: mesh.tls.server_context(
                require_client_cert=not mesh.open_paths)
        super().__init__(
            app,
            http=GuardedH11Protocol,
            # Off unless proxies are listed; when on, exactly the listed ones (never uvicorn's
            # default of 127.0.0.1 or the FORWARDED_ALLOW_IPS environment variable).
            proxy_headers=bool(serving.trusted_proxies),
            forwarded_allow_ips=list(serving.trusted_proxies),
            timeout_keep_alive=serving.keep_alive_seconds,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            server_header=False,
            date_header=False,
            **options,
        )


def server_config(app: FastAPI, serving: ServingSettings, *, mesh: MeshServing | None = None,
                  **options: Any) -> ServiceConfig:
    """The one uvicorn configuration every service runs under; ``options`` are uvicorn's own
    (host, port, log_level, access_log, TLS files); ``mesh`` serves mutual TLS instead."""
    return ServiceConfig(app, serving, mesh=mesh, **options)


def run_server(app: FastAPI, serving: ServingSettings, *, mesh: MeshServing | None = None,
               **options: Any) -> None:
    """Serve ``app`` in the foreground until interrupted (``uvicorn.run`` for one process, with
    :func:`server_config`); ``service.start_failed`` when it could not start (port taken)."""
    server = uvicorn.Server(server_config(app, serving, mesh=mesh, **options))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how an operator stops it
        server.run()
    if not server.started:
        raise ServiceError("service.start_failed", "the server did not start; see its log")


async def _until_disconnect(receive: Receive, on_gone: Callable[[], None]) -> None:
    # Once the body has been read, the server's next message is the disconnect (ASGI HTTP
    # ``http.disconnect``); anything else is skipped.
    while (await receive())["type"] != "http.disconnect":
        pass
    on_gone()


async def run_sync_until_gone(request: Request, work: Callable[[], None], *,
                              on_gone: Callable[[], None],
                              limiter: anyio.CapacityLimiter | None = None) -> None:
    """Run ``work`` on a worker thread (under ``limiter``); if the client disconnects while it
    runs, call ``on_gone`` (on the event loop: it must be quick and thread-safe, and should make
    ``work`` give up). Call it after the request body has been read; once it returns, a
    streaming response takes over listening. An exception of ``work`` is raised as it is, not
    in an exception group."""
    failed: list[Exception] = []

    def run() -> None:
        try:
            work()
        except Exception as exc:
            failed.append(exc)

    async with anyio.create_task_group() as watching:
        watching.start_soon(_until_disconnect, request.receive, on_gone)
        try:
            await anyio.to_thread.run_sync(run, limiter=limiter)
        finally:
            watching.cancel_scope.cancel()
    if failed:
        raise failed[0]


# How a streamed response ended: its body was all sent, the client left, the server cancelled it
# (stopping), or sending failed.
StreamEnd = Literal["ended", "client_gone", "cancelled", "error"]


def _next_piece(source: Iterator[bytes]) -> bytes | None:
    return next(source, None)


class _Pieces:
    """The source's pieces for Starlette, each fetched on a worker thread under ``limiter``.

    Once the client has gone, a piece that fails (the source was stopped under a thread reading
    it) ends the body quietly: there is nobody left to tell.
    """

    def __init__(self, source: Iterator[bytes], limiter: anyio.CapacityLimiter | None) -> None:
        self._source = source
        self._limiter = limiter
        self.exhausted = False
        self.client_gone = False

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        try:
            piece = await anyio.to_thread.run_sync(_next_piece, self._source,
                                                   limiter=self._limiter)
        except Exception:
            if self.client_gone:
                raise StopAsyncIteration from None
            raise
        if piece is None:
            self.exhausted = True
            raise StopAsyncIteration
        return piece


class ClosingStreamingResponse(StreamingResponse):
    """A body streamed from a blocking iterator whose source is closed however the response ends.

    Starlette (ASGI 2.3 under uvicorn) stops sending when the client disconnects and abandons a
    sync iterator, which is then closed only when the garbage collector gets to it, and not at
    all while a worker thread is inside it waiting for data. Here ``close(how)`` runs as soon as
    the client disconnects (``client_gone``: it must be safe to call from any thread while
    another waits inside the source, and should wake that thread), and again when the response
    is over (``ended``, ``client_gone``, ``cancelled`` or ``error``), on a worker thread and
    shielded from cancellation; it must be idempotent.
    """

    def __init__(self, content: Iterator[bytes], close: Callable[[StreamEnd], None], *,
                 limiter: anyio.CapacityLimiter | None = None, **kwargs: Any) -> None:
        self._pieces = _Pieces(content, limiter)
        super().__init__(self._pieces, **kwargs)
        self._close_source = close
        self._limiter = limiter

    async def _close(self, how: StreamEnd) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_source, how, limiter=self._limiter)

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self._pieces.client_gone = True
        await self._close("client_gone")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        how: StreamEnd = "error"
        try:
            await super().__call__(scope, receive, send)
            how = "ended" if self._pieces.exhausted and not self._pieces.client_gone \
                else "client_gone"
        except (ClientDisconnect, OSError):  # how ASGI 2.4 servers report a disconnect
            how = "client_gone"
            raise
        except anyio.get_cancelled_exc_class():
            how = "cancelled"
            raise
        finally:
            await self._close(how)
