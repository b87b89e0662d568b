"""Running a FastAPI app under uvicorn in a background thread, for tests, benchmarks and the demo.

Shared by every service (key broker, enclave, proxy, IdP): the socket is bound here (port 0 lets
the OS pick), so the caller knows the URL before the first request.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from medclave.errors import ServiceError


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
