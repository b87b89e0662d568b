"""What every HTTP service (key broker, enclave, proxy, IdP) shares: bounded request bodies, the
error handlers that keep internal detail out of responses, and :class:`BackgroundServer`.

For the services only: attestation, audit, crypto and protocol import no web framework, so they
never import this module.

:class:`BackgroundServer` runs an app under uvicorn in a background thread, for tests, benchmarks
and the demo: the socket is bound here (port 0 lets the OS pick), so the caller knows the URL
before the first request.

:class:`ClosingStreamingResponse` streams a body from a blocking iterator and closes its source
however the response ends, the client leaving included (the enclave records a streamed answer
then; the proxy drops its upstream stream, so the enclave learns of it).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Literal

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from medclave.errors import InputError, MedclaveError, ServiceError

RenderError = Callable[[MedclaveError], JSONResponse]
LogRefusal = Callable[[Request, MedclaveError], None]
LogUnexpected = Callable[[Request, Exception], None]


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refused with ``input.too_large`` past ``limit`` bytes before it is all
    read: a declared Content-Length over the limit before the first byte (one that is not ASCII
    digits is ``input.malformed``), a chunked body as soon as it grows past the limit."""
    declared = request.headers.get("content-length")
    # isascii: "²".isdigit() is True but int("²") raises; only ASCII digits are a length.
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise InputError("input.malformed", "Content-Length is not a decimal number")
    if declared is not None and int(declared) > limit:
        raise InputError("input.too_large", f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InputError("input.too_large", f"request body over {limit} bytes")
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


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + ...)``."""

    def __init__(self, app: FastAPI | Callable[[str], FastAPI], *, host: str = "127.0.0.1",
                 port: int = 0, name: str = "medclave-server") -> None:
        """``app`` may be a factory taking the server's URL, for apps that must know their own
        address (an issuer's ``iss``)."""
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        # socket says it is TCP (proto 0 does not); without it every keep-alive response waits
        # out a delayed ACK (~40 ms). NODELAY on the listener is inherited on Linux as well.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        if not isinstance(app, FastAPI):
            app = app(self.url)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", server_header=False,
                                date_header=False, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServiceError("service.start_failed", "the server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


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
