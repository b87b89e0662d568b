"""A recording TLS relay between one SuperNode and the SuperLink.

It terminates the SuperNode's TLS with the SuperLink's own certificate (as a TLS-terminating
load balancer in front of the SuperLink would), opens its own TLS connection to the SuperLink
(verified against the federation CA), and keeps every plaintext byte that passes, both ways: a
recording of exactly what the SuperLink receives from and sends to that site.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path


class RecordingRelay:
    def __init__(self, *, upstream_port: int, cert: Path, key: Path, ca: Path) -> None:
        self.upstream_port = upstream_port
        self.server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ctx.load_cert_chain(cert, key)
        self.client_ctx = ssl.create_default_context(cafile=str(ca))
        self.to_superlink = bytearray()
        self.from_superlink = bytearray()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> RecordingRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def recording(self) -> bytes:
        return bytes(self.to_superlink) + bytes(self.from_superlink)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0,
                                                      ssl=self.server_ctx)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port, ssl=self.client_ctx, server_hostname="127.0.0.1")
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       tape: bytearray) -> None:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    tape.extend(data)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, ssl.SSLError):
                dst.close()

        await asyncio.gather(pump(reader, up_writer, self.to_superlink),
                             pump(up_reader, writer, self.from_superlink))
