"""Replica settings, the HAProxy configuration Medclave renders (checked and run by the real
HAProxy), and what the proxy concludes when replicas cannot be reached (docs/scaling-out.md)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from typer.testing import CliRunner

from medclave.background import BackgroundServer
from medclave.cli.proxy import app as proxy_cli
from medclave.client.proxy import ProxySettings
from medclave.client.replicas import ReplicaSet
from medclave.errors import ClientError, InputError
from medclave.ops.balancer import haproxy_config
from medclave.ops.config import load_settings
from tests.e2e.helpers import sim_policy
from tests.e2e.replica_helpers import HAProxy, free_port, haproxy_binary

runner = CliRunner()


@pytest.fixture
def haproxy_installed() -> str:
    binary = haproxy_binary()
    if binary is None:
        if os.environ.get("MEDCLAVE_REQUIRE_VECTORS") == "1":
            pytest.fail("haproxy is required (.ci/run installs it)")
        pytest.skip("haproxy is not installed")
    return binary


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("names, why", [
    (["R1"], "must match"), (["r1", "r1"], "named twice"), ([""], "must match"),
    (["r 1"], "must match"), (["a" * 33], "must match"), (["r1\nbackend x"], "must match"),
])
def test_replica_names_are_checked(tmp_path: Path, names: list[str], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        ProxySettings(upstream="http://127.0.0.1:1", policy_file=tmp_path / "p.toml",
                      replicas=tuple(names))


def test_replicas_from_the_config_file_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('upstream = "http://127.0.0.1:9"\npolicy_file = "p.toml"\n'
                      'replicas = ["r1", "r2"]\n')
    assert load_settings(ProxySettings, config_file=config).replicas == ("r1", "r2")
    monkeypatch.setenv("MEDCLAVE_PROXY_REPLICAS", '["r3"]')
    assert load_settings(ProxySettings, config_file=config).replicas == ("r3",)
    monkeypatch.setenv("MEDCLAVE_PROXY_REPLICAS", '["r3", "r3"]')
    with pytest.raises(InputError, match=r"replicas.*named twice") as refused:
        load_settings(ProxySettings, config_file=config)
    assert refused.value.code == "config.invalid"


# --- the balancer's configuration ----------------------------------------------------------


@pytest.mark.parametrize("tls_passthrough", [False, True])
def test_haproxy_accepts_the_rendered_configuration(tmp_path: Path, haproxy_installed: str,
                                                    tls_passthrough: bool) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(("127.0.0.1", 8443), {"r1": ("10.0.0.1", 8443),
                                                         "r2": ("10.0.0.2", 8443)},
                                   tls_passthrough=tls_passthrough))
    checked = subprocess.run([haproxy_installed, "-c", "-f", str(path)], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("listen, replicas", [
    (("127.0.0.1", 80), {}),
    (("127.0.0.1", 80), {"R1": ("127.0.0.1", 1)}),
    (("127.0.0.1", 80), {"r1": ("127.0.0.1\n    server evil 1.2.3.4", 1)}),
    (("127.0.0.1 ssl", 80), {"r1": ("127.0.0.1", 1)}),
    (("127.0.0.1", 80), {"r1": ("127.0.0.1", 0)}),
])
@pytest.mark.parametrize("tls_passthrough", [False, True])
def test_a_bad_balancer_configuration_is_refused(listen: tuple[str, int],
                                                 replicas: dict[str, tuple[str, int]],
                                                 tls_passthrough: bool) -> None:
    with pytest.raises(InputError) as refused:
        haproxy_config(listen, replicas, tls_passthrough=tls_passthrough)
    assert refused.value.code == "config.invalid"


def test_the_cli_prints_the_configuration() -> None:
    done = runner.invoke(proxy_cli, ["balancer-config", "--listen", "127.0.0.1:8443",
                                     "--replica", "r1=10.0.0.1:8443",
                                     "--replica", "r2=10.0.0.2:8443"])
    assert done.exit_code == 0, done.output
    assert "use_backend replica-r2 if { req.hdr(medclave-replica) -m str r2 }" in done.output
    assert "server r1 10.0.0.1:8443" in done.output
    bad = runner.invoke(proxy_cli, ["balancer-config", "--listen", "127.0.0.1:8443",
                                    "--replica", "R1=10.0.0.1:8443"])
    assert bad.exit_code == 2 and "config.invalid" in bad.output


def test_the_cli_prints_the_tls_passthrough_configuration() -> None:
    done = runner.invoke(proxy_cli, ["balancer-config", "--listen", "127.0.0.1:8443",
                                     "--replica", "r1=10.0.0.1:8443",
                                     "--replica", "r2=10.0.0.2:8443", "--tls-passthrough"])
    assert done.exit_code == 0, done.output
    assert "    mode tcp" in done.output and "mode http" not in done.output
    assert "tcp-request content reject unless { req.ssl_hello_type 1 }" in done.output
    assert ("use_backend replica-r2 if { req.ssl_sni -i r2.replica.medclave.invalid }"
            in done.output)
    assert "server r1 10.0.0.1:8443" in done.output
    assert "medclave-replica" not in done.output  # it cannot read the header


def _hello(port: int, server_name: str) -> None:
    """A TLS ClientHello naming ``server_name``; the handshake cannot finish (the stand-in
    server below speaks no TLS)."""
    context = ssl.create_default_context()
    with (socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
          pytest.raises((ssl.SSLError, OSError))):
        context.wrap_socket(sock, server_hostname=server_name)


def test_the_passthrough_balancer_forwards_only_a_known_server_name(
        tmp_path: Path, haproxy_installed: str) -> None:
    """A stand-in replica records what reaches it: the hello naming r1 is forwarded as is (TLS
    not terminated: its first byte is the handshake record type, 0x16); a hello naming
    another replica or no TLS at all reaches nothing (the health checks' bare connections
    carry no byte)."""
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(5)
                except OSError:
                    data = b""
                if data:
                    received.append(data)

    threading.Thread(target=accept, daemon=True).start()
    lb = HAProxy(tmp_path / "haproxy", {"r1": listener.getsockname()[1]}, tls_passthrough=True)
    try:
        _hello(lb.port, "r9.replica.medclave.invalid")
        _hello(lb.port, "r1.example")
        with socket.create_connection(("127.0.0.1", lb.port), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nmedclave-replica: r1\r\n\r\n")
            assert plain.recv(100) == b""  # closed, nothing forwarded
        assert received == []
        _hello(lb.port, "r1.replica.medclave.invalid")
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        lb.stop()
        listener.close()
    assert len(received) == 1 and received[0][0] == 0x16  # a TLS handshake record, as sent


@pytest.fixture
def busy_enclave() -> Iterator[BackgroundServer]:
    """A stand-in replica that answers its own 503 (as an enclave does: revoked, busy)."""
    app = FastAPI()

    @app.get("/healthz")
    async def alive() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def busy(path: str) -> JSONResponse:
        return JSONResponse({"error": {"code": "enclave.revoked", "message": "no"}},
                            status_code=503)

    server = BackgroundServer(app, name="busy-replica").start()
    yield server
    server.stop()


def test_only_the_balancers_own_error_says_not_forwarded(
        tmp_path: Path, haproxy_installed: str, busy_enclave: BackgroundServer) -> None:
    """The mark the proxy fails over on is on what HAProxy makes when it forwarded nothing (a
    replica down, an unknown name), never on a replica's own answer, even a 503."""
    lb = HAProxy(tmp_path, {"up": busy_enclave.port, "gone": free_port()})
    try:
        with httpx.Client(base_url=lb.url, timeout=10) as http:
            own = http.post("/v1/ohttp", headers={"medclave-replica": "up"})
            gone = http.post("/v1/ohttp", headers={"medclave-replica": "gone"})
            unknown = http.post("/v1/ohttp", headers={"medclave-replica": "nope"})
    finally:
        lb.stop()
    assert own.status_code == 503 and "medclave-not-forwarded" not in own.headers
    assert own.json()["error"]["code"] == "enclave.revoked"
    for answer in (gone, unknown):
        assert answer.status_code == 503 and answer.headers["medclave-not-forwarded"] == "1"
    assert lb.posts_to("up") == 1
    assert [st for b, _, st, _, _ in lb.requests() if b == "replica-gone"] == ["503"]


def test_no_replica_reachable_sends_nothing(tmp_path: Path, haproxy_installed: str) -> None:
    """Every replica down behind the balancer, and no balancer at all: ``client.no_replica``,
    each replica marked down with the cause, nothing sent."""
    lb = HAProxy(tmp_path, {"r1": free_port(), "r2": free_port()})
    try:
        for url in (lb.url, f"http://127.0.0.1:{free_port()}"):
            replicas = ReplicaSet(url, ["r1", "r2"], sim_policy(), timeout=10)
            try:
                with pytest.raises(ClientError) as refused:
                    replicas.request("GET", "/v1/models")
                state = replicas.replicas()
                trust = replicas.trust_state()
            finally:
                replicas.close()
            assert refused.value.code == "client.no_replica"
            assert {n: (s["up"], s["trust"]["code"]) for n, s in state.items()} == {
                "r1": (False, "client.upstream_failed"), "r2": (False, "client.upstream_failed")}
            assert trust["state"] == "failed"
    finally:
        lb.stop()
    assert lb.posts_to("r1") == lb.posts_to("r2") == 0


def test_the_proxy_command_refuses_a_bad_replica_name(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "h"\nplatforms = ["sim"]\nmodel_digests = ["' + "0" * 64 + '"]\n')
    done = runner.invoke(proxy_cli, ["--upstream", "http://127.0.0.1:9", "--policy", str(policy),
                                     "--replica", "r1", "--replica", "r1"])
    assert done.exit_code == 2
    assert "config.invalid" in done.output and "replicas" in done.output
    assert "named twice" in done.output
