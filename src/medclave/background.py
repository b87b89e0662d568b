"""Services in a background thread on 127.0.0.1, for the demo, the tests and the benchmarks.

Nothing in the library imports this module (it sits beside ``demo.py`` on the top layer): the
services themselves run in the foreground through :func:`medclave.serving.run_server`.
:class:`BackgroundServer` binds its socket itself (port 0 lets the OS pick), so the caller knows
the URL before the first request, and serves with the same configuration as ``run_server``
(trusted proxies, read deadlines). :func:`running` serves the development IdP that way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from medclave.auth.idp_server import create_app
from medclave.auth.issuer import TokenService
from medclave.errors import ServiceError
from medclave.serving import MeshServing, ServingSettings, server_config
from medclave.util.clock import Clock, system_clock


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + ...)``."""

    def __init__(self, app: FastAPI | Callable[[str], FastAPI], *, host: str = "127.0.0.1",
                 port: int = 0, name: str = "medclave-server",
                 serving: ServingSettings | None = None, mesh: MeshServing | None = None) -> None:
        """``app`` may be a factory taking the server's URL, for apps that must know their own
        address (an issuer's ``iss``). ``serving`` defaults to :class:`ServingSettings`' own;
        ``mesh`` serves mutual TLS (https)."""
        self._scheme = "https" if mesh is not None else "http"
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
        config = server_config(app, serving or ServingSettings(), mesh=mesh,
                               log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

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


@contextmanager
def running(
    service_factory: Any, *, host: str = "127.0.0.1", clock: Clock = system_clock
) -> Iterator[tuple[str, TokenService]]:
    """Serve in a background thread on a free port; yields (base URL, service); stops after.

    ``service_factory(issuer_url)`` builds the service once the URL is known. For tests and
    local demos only.
    """
    built: list[TokenService] = []

    def make_app(url: str) -> FastAPI:
        built.append(service_factory(url))
        return create_app(built[0], clock=clock)

    with BackgroundServer(make_app, host=host, name="medclave-idp") as server:
        yield server.url, built[0]
