"""Enclave replicas as real processes (so that one can be SIGKILLed) behind a real HAProxy, on
127.0.0.1 and free ports; used by tests/e2e/test_replicas.py and benchmarks/replicas.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from medclave.attestation.sim import SimAuthority
from medclave.audit import parse_entry
from medclave.ops.balancer import haproxy_config
from tests.e2e.helpers import ISSUER, MEASUREMENT, TENANT, Idp, write_commitment_key

HAPROXY = "/usr/sbin/haproxy"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (HAPROXY if Path(HAPROXY).exists() else None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(probe: object, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
          log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():  # type: ignore[operator]
                return
        except (OSError, httpx.HTTPError):
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{what} not ready after {timeout} s:\n{tail}")
        time.sleep(0.05)


@dataclass
class Replica:
    """One enclave (sim, llama.cpp with the bundled model) in its own process."""

    name: str
    folder: Path
    port: int
    measurement: str
    idp: Idp | None
    threads: int = 1
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sim_root(self) -> str:
        return SimAuthority.load_or_create(self.folder).root_fingerprint

    def _config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = {"host": "127.0.0.1", "port": self.port, "data_dir": str(self.folder),
                 "platform": "sim", "sim_measurement": self.measurement,
                 "n_threads": self.threads, "n_ctx": 1024,
                 "commitment_key_file": str(write_commitment_key(self.folder / "tenant.key"))}
        if self.idp is None:
            lines["insecure_no_auth"] = True
        else:
            lines.update(auth_issuer=ISSUER, auth_jwks_file=str(self.idp.jwks))
        text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items())
        if self.idp is not None:
            text += f"auth_tenants = [{json.dumps(TENANT)}]\n"
        path = self.folder / "enclave.toml"
        path.write_text(text)
        return path

    def start(self) -> Replica:
        config = self._config()
        log = self.folder / "enclave.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ORT_DISABLE_TELEMETRY": "1"}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "medclave.cli.main", "enclave", "serve",
                 "--config", str(config)], stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, timeout: float = 120.0) -> Replica:
        _wait(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200,
              f"replica {self.name}", timeout, self.proc, self.folder / "enclave.log")
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a crash or an operator pulling the plug)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def audit_request_ids(self) -> list[str]:
        """The request id of every entry in this replica's audit logs on disk (every log file:
        a restart with a new key starts a new one), read like an auditor would."""
        ids: list[str] = []
        for db in sorted((self.folder / "audit").glob("*.sqlite3")):
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = conn.execute("SELECT data FROM entries ORDER BY idx").fetchall()
            ids += [parse_entry(bytes(row[0])).request_id for row in rows]
        return ids


def start_replicas(folder: Path, idp: Idp | None, names: list[str], *,
                   measurements: dict[str, str] | None = None, threads: int = 1
                   ) -> dict[str, Replica]:
    """Replicas started together (their model loads overlap), each ready when returned."""
    replicas = {name: Replica(name, folder / name, free_port(),
                              (measurements or {}).get(name, MEASUREMENT), idp, threads)
                for name in names}
    try:
        for r in replicas.values():
            r.start()
        for r in replicas.values():
            r.wait_ready()
    except BaseException:
        for r in replicas.values():
            r.stop()
        raise
    return replicas


class HAProxy:
    """HAProxy from Debian in front of the replicas, with the configuration Medclave renders
    (ops/balancer.py); its request log (``backend server status method path``) is kept.
    ``tls_passthrough``: the mesh's ``mode tcp`` configuration, routing on the TLS server name
    (its log: one line per connection, ``backend server termination-state bytes-up
    bytes-down``)."""

    def __init__(self, folder: Path, replicas: dict[str, int], *,
                 tls_passthrough: bool = False) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "haproxy.cfg"
        self.config.write_text(haproxy_config(
            ("127.0.0.1", self.port), {n: ("127.0.0.1", p) for n, p in replicas.items()},
            check_interval_ms=500, tls_passthrough=tls_passthrough))
        self.log = folder / "haproxy.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT)
        _wait(self._listening, "haproxy", 15, self.proc, self.log)

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str, str, str, str]]:
        """(backend, server, status, method, path) of every request logged so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[3] in ("GET", "POST") and parts[2].isdigit():
                out.append((parts[0], parts[1], parts[2], parts[3], parts[4]))
        return out

    def connections(self) -> list[tuple[str, str, str]]:
        """(backend, server, termination state) of every connection logged so far
        (``tls_passthrough``)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[3].isdigit() and parts[4].isdigit():
                out.append((parts[0], parts[1], parts[2]))
        return out

    def posts_to(self, name: str) -> int:
        """OHTTP posts routed to replica ``name``'s backend (the proxy's choice), whatever
        became of them."""
        return sum(1 for b, _, _, m, p in self.requests()
                   if b == f"replica-{name}" and m == "POST" and p == "/v1/ohttp")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Cable:
    """A TCP forwarder in front of a replica that the test can cut: every connection is reset
    at once (SO_LINGER 0), as the balancer sees a replica that dies mid-request. Nothing is
    parsed: bytes are copied both ways."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        threading.Thread(target=self._accept, name="cable", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    server.close()
                    continue
                self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                if self._cut:  # SO_LINGER 0 is set: closing sends a reset
                    src.close()
                    dst.close()
                else:
                    dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every connection and refuse new ones: the replica is gone. (Closing a socket
        another thread reads does not wake it on Linux; SHUT_RD does, and sends nothing; the
        woken pump then closes with SO_LINGER 0, a reset.)"""
        with self._lock:
            self._cut = True
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
            self._open = []

    def close(self) -> None:
        self.cut()
