"""llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``, from
llama-cpp-python's ``server`` extra) as the stand-in for vLLM: another process, on a free
127.0.0.1 port, serving the bundled model under its measured id, stopped after.

Shared by the remote-engine tests and ``benchmarks/remote_engine.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from medclave.enclave.model import DEFAULT_MODEL_ID, default_model_path

# llama_cpp.server has no GET /version (vLLM's): the build is given, as `engine_build` is.
SERVER_BUILD = "llama-cpp-python/0.3.36-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``with LlamaServer() as server: server.url``; ``stop()`` may also be called early (the
    engine going away under a running enclave)."""

    def __init__(self, *, model: Path | None = None, alias: str = DEFAULT_MODEL_ID,
                 n_ctx: int = 1024, threads: int = 2, log: Path | None = None) -> None:
        self.model = model or default_model_path()
        self.alias = alias
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                      "--model_alias", alias, "--host", "127.0.0.1", "--port", str(self.port),
                      "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                      "--n_threads_batch", str(threads), "--seed", "0", "--verbose", "False"]
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> LlamaServer:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1"}
        out = self._log.open("ab") if self._log is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(self._args, stdout=out, stderr=subprocess.STDOUT,
                                         env=env)
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited ({self._process.returncode})")
                try:
                    if http.get(f"{self.url}/v1/models").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("llama_cpp.server did not start in time")
                time.sleep(0.1)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
