"""Flower's deployment engine on this machine: SuperLink, SuperNodes and ``flwr run``.

Nothing federated is rebuilt here: these are Flower's own commands, started as separate
processes with TLS and SuperNode authentication on:

- ``flower-superlink --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile --enable-supernode-auth
  --disable-runtime-dependency-installation --host 127.0.0.1 --port P``: one HTTPS port for the
  Fleet, Control and Runtime APIs (Flower 1.41); only registered node keys may connect.
- ``flower-supernode --root-certificates CA --superlink 127.0.0.1:P
  --auth-supernode-private-key node.key --node-config 'site-dir="..."'``, one per site.
- ``flwr supernode register node.pub`` (what admission calls once evidence passed) and
  ``flwr run APP`` against the connection in ``FLWR_HOME/config.toml``.

:func:`make_tls` makes the federation's CA and the SuperLink's certificate with ``cryptography``
(P-384, SAN 127.0.0.1 and localhost). Every process is started in its own session and stopped by
its process group (:class:`Proc`), so a run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medclave.errors import FederationError
from medclave.util.files import write_secret_file

APP_NAME = "medclave-fl"
APP_CONFIG: dict[str, Any] = {
    "federation-dir": "", "run-dir": "", "rounds": 3, "local-steps": 40, "gate": True,
    "secagg": True, "dp": False, "noise-multiplier": 0.5, "clipping-norm": 1.0,
    "delta": 1e-5, "min-sites": 3, "wait-seconds": 60.0,
}


def _bin(name: str) -> str:
    """Flower's console scripts beside this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FederationError("fl.run_failed", f"{name} not found: is flwr installed?")
    return found


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a one-day CA and a SuperLink certificate for
    127.0.0.1/localhost. The CA key is discarded: nothing else is ever issued under it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medclave federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    paths = (folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_secret_file(paths[2], key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def write_app(folder: Path) -> Path:
    """The Flower App: a pyproject.toml whose components are medclave's ServerApp and
    ClientApp (the code the sites' and the aggregator's measurements cover)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {json.dumps(v)}" for k, v in APP_CONFIG.items())
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "Medclave confidential federated learning"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "medclave"

[tool.flwr.app.components]
serverapp = "medclave.fl.server_app:app"
clientapp = "medclave.fl.client_app:app"

[tool.flwr.app.config]
{config}
""", encoding="utf-8")
    return folder


def write_cli_config(home: Path, address: str, ca: Path) -> None:
    """``FLWR_HOME/config.toml`` naming this federation's SuperLink, TLS pinned to its CA."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "federation"\n\n[superlink.federation]\n'
        f'address = "{address}"\nroot-certificates = "{ca}"\n', encoding="utf-8")


@dataclass
class Proc:
    """A Flower process in its own session, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process and everything it started. Flower detaches its helpers (SuperExec,
        then the ServerApp or ClientApp processes) into sessions of their own, so the tree is
        collected from /proc first and each of its processes signalled by id."""
        tree = [self.popen.pid, *descendants(self.popen.pid)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            deadline = time.monotonic() + grace
            while any(_alive(p) for p in tree[1:]) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not any(_alive(p) for p in tree[1:]):
                break
        if self._log_file is not None:
            self._log_file.close()

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def spawn(name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str]) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                             start_new_session=True, stdin=subprocess.DEVNULL)
    return Proc(name, popen, log, out)


def base_env(flwr_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    env["FLWR_HOME"] = str(flwr_home)
    env["PYTHONUNBUFFERED"] = "1"
    # Flower starts its own helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start_superlink(fed_dir: Path, port: int) -> Proc:
    tls = fed_dir / "tls"
    home = fed_dir / "superlink-home"
    home.mkdir(parents=True, exist_ok=True)
    return spawn("superlink", [
        _bin("flower-superlink"), "--ssl-certfile", str(tls / "server.pem"),
        "--ssl-keyfile", str(tls / "server.key"), "--ssl-ca-certfile", str(tls / "ca.pem"),
        "--enable-supernode-auth", "--disable-runtime-dependency-installation",
        "--database", str(home / "state.db"),
        "--host", "127.0.0.1", "--port", str(port)], log=fed_dir / "logs" / "superlink.log",
        env=base_env(home))


def start_supernode(site_dir: Path, *, superlink: str, ca: Path, port: int,
                    extra_config: Mapping[str, int | str] | None = None) -> Proc:
    items = {"site-dir": str(site_dir), **(extra_config or {})}
    node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in items.items())
    return spawn(f"supernode-{site_dir.name}", [
        _bin("flower-supernode"), "--root-certificates", str(ca), "--superlink", superlink,
        "--auth-supernode-private-key", str(site_dir / "node.key"),
        "--host", "127.0.0.1", "--port", str(port), "--node-config", node_config,
        "--max-wait-time", "120"], log=site_dir / "logs" / "supernode.log",
        env=base_env(site_dir / "flwr-home"))


def flwr(args: Sequence[str], *, home: Path, timeout: float) -> dict[str, Any]:
    """Run one ``flwr`` command with ``--format json``; its JSON answer, or ``fl.run_failed``."""
    try:
        done = subprocess.run([_bin("flwr"), *args, "--format", "json"], env=base_env(home),
                              capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise FederationError("fl.run_failed", f"flwr {args[0]} timed out") from exc
    text = done.stdout.decode(errors="replace")
    start = text.find("{")
    try:
        answer = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        answer = {}
    if done.returncode != 0 or not isinstance(answer, dict) or not answer.get("success"):
        raise FederationError("fl.run_failed", f"flwr {' '.join(args[:2])} failed: "
                              f"{text[-400:]} {done.stderr.decode(errors='replace')[-400:]}")
    return answer


def register_node(home: Path, public_key: Path, *, name: str, timeout: float = 60.0) -> int:
    answer = flwr(["supernode", "register", str(public_key), "federation", "--name", name],
                  home=home, timeout=timeout)
    return int(answer["node-id"])


def run_app(home: Path, app: Path, config: Mapping[str, Any], *, timeout: float) -> int:
    """Submit the app (``flwr run``); returns the run id. Progress: :func:`wait_run`."""
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    answer = flwr(["run", str(app), "federation", "--run-config", overrides], home=home,
                  timeout=timeout)
    return int(answer["run-id"])


def run_status(home: Path, run_id: int, *, timeout: float = 60.0) -> str:
    answer = flwr(["list", "federation", "--run-id", str(run_id)], home=home, timeout=timeout)
    runs = answer.get("runs") or []
    return str(runs[0].get("status", "")) if runs else ""


def wait_run(home: Path, run_id: int, *, timeout: float, done: Path | None = None,
             poll: float = 0.5, check_every: float = 30.0) -> str:
    """Wait for the run to finish; its final status (``finished:completed``). ``done`` is a
    file the run writes last (the ServerApp's result): watched cheaply, while ``flwr list``
    (a whole CLI process, seconds of CPU) is asked only every ``check_every`` seconds."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + (check_every if done is not None else 0.0)
    while time.monotonic() < deadline:
        ready = done is not None and done.exists()
        if ready or time.monotonic() >= next_check:
            status = run_status(home, run_id)
            if status.startswith("finished"):
                return status
            next_check = time.monotonic() + (check_every if done is not None else poll)
        time.sleep(2.0 if ready else poll)
    raise FederationError("fl.run_failed", f"run {run_id} did not finish in {timeout:.0f}s")
