"""The enclave starts the engine server itself, on the very weights it hashed.

With ``engine_command`` set, the enclave does not trust an engine someone else started: it
starts the server as its own child process, on a free 127.0.0.1 port, and hands it the model
as an inherited file descriptor, so that the server loads the bytes the enclave hashed and
nothing else:

* a sealed model is already an anonymous memory file sealed read-only
  (:func:`medclave.crypto.sealed.open_to_memfd`); only the enclave and its child hold it, and
  neither can change it;
* a plain model file (``model_path``) is opened once by the boot and hashed through that
  descriptor, which the child gets (a file renamed or replaced after the hash does not matter;
  one written in place would, which is why plain files are for development);
* a model folder (safetensors) cannot travel as one descriptor: its path is given, hashed as
  the boot hashes it; the VM's measured disk is what keeps it (so is the bundled model's).

The command is an argv list (no shell) with placeholders: ``{model}`` (the weights as the
child opens them, ``/proc/self/fd/N`` for a descriptor), ``{port}`` and ``{model_id}``. The
child gets the enclave's environment without its ``MEDCLAVE_*`` settings, with
``HF_HUB_OFFLINE=1`` (nothing is downloaded), and no terminal output: an engine that logs
prompts would otherwise put them in the operator's console. Once it answers ``GET
/v1/models``, it is used as any OpenAI-compatible engine (:mod:`.openai_compat`, whose checks
of the served model still apply); closing the engine (shutdown, revocation) stops the child.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence

import httpx

from medclave.enclave.engines.openai_compat import OpenAICompatEngine
from medclave.errors import EnclaveError

FD_PREFIX = "/proc/self/fd/"
_POLL = 0.1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def model_handle(model_path: str) -> tuple[str, int | None]:
    """``(path for the child, descriptor to hand it or None)``: a descriptor path (a sealed
    model's memory file, or a plain file the boot opened and hashed through it) travels as the
    descriptor; anything else (a folder, the bundled model) by its path."""
    if model_path.startswith(FD_PREFIX):
        return model_path, int(model_path[len(FD_PREFIX):])
    return model_path, None


def _argv(command: Sequence[str], *, model: str, port: int, model_id: str) -> list[str]:
    return [arg.replace("{model}", model).replace("{port}", str(port))
            .replace("{model_id}", model_id) for arg in command]


class LaunchedEngine(OpenAICompatEngine):
    """An OpenAI-compatible engine the enclave started, and stops when it is closed."""

    def __init__(self, command: Sequence[str], *, model_path: str, model: str,
                 build_id: str | None, start_seconds: float = 600.0) -> None:
        if not command:
            raise EnclaveError("enclave.engine_failed", "engine_command is empty")
        path, fd = model_handle(model_path)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCLAVE_")}
        env["HF_HUB_OFFLINE"] = "1"
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                _argv(command, model=path, port=port, model_id=model),
                pass_fds=(fd,) if fd is not None else (), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise EnclaveError("enclave.engine_failed",
                               f"the engine command cannot start: {type(exc).__name__}") from exc
        url = f"http://127.0.0.1:{port}"
        try:
            self._wait_ready(url, start_seconds)
            super().__init__(url, model=model, build_id=build_id)
            self.check_served(path)
        except BaseException:
            self._stop()
            raise

    def _wait_ready(self, url: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with httpx.Client(trust_env=False, timeout=5.0) as http:
            while True:
                process = self._process
                assert process is not None
                if process.poll() is not None:
                    raise EnclaveError("enclave.engine_unavailable", "the engine exited while "
                                       f"starting (status {process.returncode})")
                try:
                    if http.get(f"{url}/v1/models").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise EnclaveError("enclave.engine_unavailable",
                                       f"the engine did not start in {seconds:.0f} s")
                time.sleep(_POLL)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._stop()
