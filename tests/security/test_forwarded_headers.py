"""Issue 9 part 3: forwarded headers are believed only from proxies the operator lists.

The attack: on loopback, uvicorn's default proxy-header handling (on, trusting 127.0.0.1) made
every caller a "trusted proxy", so an ``X-Forwarded-For`` of the caller's choosing gave it a fresh
rate-limit bucket per request (120 of 120 releases through) and wrote that address into the
decision log. Reproduced here against a real ``medclave kbs serve`` with its defaults.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from medclave.auth import idp_server
from medclave.background import BackgroundServer
from medclave.cli import kbs as kbs_cli
from medclave.client import proxy as proxy_module
from medclave.enclave import server as enclave_server
from medclave.enclave.settings import EnclaveSettings
from medclave.kbs import server as kbs_server
from medclave.kbs.client import OwnerClient
from medclave.kbs.settings import KbsSettings
from medclave.kbs.store import MemoryKbsStore
from medclave.ops.http import instrument
from medclave.serving import GuardedH11Protocol, ServingSettings, server_config
from tests.kbs.conftest import Clock, Live, make_settings, serve_broker

RESOURCE = "kbs:///acme/model-key/m"
SRC = Path(__file__).resolve().parents[2] / "src" / "medclave"


def _release_body() -> dict[str, Any]:
    """A well-formed release the broker refuses as kbs.nonce_unknown (it issued no such nonce)."""
    return {"resource": RESOURCE, "nonce": "00" * 32,
            "evidence": {"platform": "sim", "evidence": "AA==", "nonce": "", "runtime": {}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def kbs_serve(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``medclave kbs serve`` in a subprocess with its defaults (only the rate is lowered, so
    the bound below is tight on a slow machine); yields (URL, an owner token for acme)."""
    data = tmp_path / "kbs"
    added = CliRunner().invoke(kbs_cli.app, ["owner", "add", "acme", "--data", str(data)])
    assert added.exit_code == 0, added.output
    token = json.loads(added.stdout)["token"]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDCLAVE_KBS_")}
    env.pop("FORWARDED_ALLOW_IPS", None)
    env.update({"MEDCLAVE_KBS_RATE_PER_SECOND": "2", "MEDCLAVE_KBS_RATE_BURST": "10"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "medclave.cli.main", "kbs", "serve", "--port", str(port),
         "--data", str(data)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "kbs serve exited"
            try:
                httpx.get(url + "/", timeout=1.0)  # an unknown route: answered, not rate limited
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "kbs serve did not start"
                time.sleep(0.1)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_kbs_serve_ignores_a_spoofed_forwarded_for(kbs_serve: tuple[str, str]) -> None:
    url, token = kbs_serve
    tries = 60
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        statuses = [client.post("/kbs/v1/release", json=_release_body(),
                                headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                    for i in range(tries)]
    elapsed = time.monotonic() - started
    through = sum(1 for s in statuses if s != 429)
    assert set(statuses) <= {400, 429}
    # One bucket for the one real peer: the burst of 10 plus 2 per second, never 60 of 60.
    assert through <= 10 + 2 * elapsed + 1, (through, elapsed)
    assert through < tries
    time.sleep(1.0)  # a token for the owner's read
    with OwnerClient(url, token) as owner:
        seen = owner.decisions(resource=RESOURCE, limit=1000)
    assert seen and {d["client"] for d in seen} == {"ip:127.0.0.1"}
    assert not any("198.51.100" in str(d) for d in seen)
    releases = [d for d in seen if d["action"] == "release"]
    assert {d["code"] for d in releases} == {"kbs.nonce_unknown"}
    assert sum(d["count"] for d in releases) == through


def _client_echo() -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    def who(request: Request) -> dict[str, Any]:
        return {"client": request.client.host if request.client else None,
                "scheme": request.url.scheme}

    return app


def _from(address: str, url: str, headers: dict[str, str]) -> dict[str, Any]:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=10.0) as client:
        answer: dict[str, Any] = client.get(url + "/who", headers=headers).json()
        return answer


def test_a_trusted_proxy_is_believed_only_from_its_address() -> None:
    serving = ServingSettings(trusted_proxies=("127.0.0.2",))
    spoof = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    with BackgroundServer(_client_echo(), serving=serving) as server:
        assert _from("127.0.0.1", server.url, spoof) == {"client": "127.0.0.1", "scheme": "http"}
        assert _from("127.0.0.2", server.url, spoof) == {"client": "203.0.113.7",
                                                          "scheme": "https"}
        # What the client wrote before the proxy appended its peer is not believed.
        chained = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
        assert _from("127.0.0.2", server.url, chained)["client"] == "203.0.113.7"
    with BackgroundServer(_client_echo()) as server:  # the default: nobody is a proxy
        assert _from("127.0.0.1", server.url, spoof) == {"client": "127.0.0.1", "scheme": "http"}


def test_the_broker_keys_rate_and_log_on_the_forwarded_client_behind_a_trusted_proxy(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path, trusted_proxies=("127.0.0.2",), rate_per_second=0.001,
                             rate_burst=2)
    server, live = serve_broker(settings, store=MemoryKbsStore(), clock=Clock())
    with server:
        _releases_through_a_proxy(server.url, live)


def _releases_through_a_proxy(url: str, live: Live) -> None:
    body = _release_body()

    def release(address: str, forwarded: str) -> int:
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(transport=transport, timeout=10.0) as client:
            return client.post(url + "/kbs/v1/release", json=body,
                               headers={"X-Forwarded-For": forwarded}).status_code

    # Through the proxy, two hospitals behind it have a bucket each.
    assert [release("127.0.0.2", "203.0.113.7") for _ in range(3)] == [400, 400, 429]
    assert [release("127.0.0.2", "203.0.113.8") for _ in range(2)] == [400, 400]
    # Direct from elsewhere, the header is ignored: one bucket, whatever it claims.
    assert [release("127.0.0.1", f"203.0.113.{i}") for i in range(10, 13)] == [400, 400, 429]
    assert {d.client for d in live.decisions} == {"ip:203.0.113.7", "ip:203.0.113.8",
                                                  "ip:127.0.0.1"}


@pytest.mark.parametrize("value", ["*", "proxy.example", "10.0.0.1/8", "10.0.0.256", ""])
def test_a_trusted_proxy_is_an_ip_or_a_network(value: str) -> None:
    with pytest.raises(ValueError, match="trusted proxy"):
        ServingSettings(trusted_proxies=(value,))
    with pytest.raises(ValueError, match="trusted proxy"):
        KbsSettings(trusted_proxies=(value,))
    assert ServingSettings(trusted_proxies=("10.0.0.0/8", "::1")).trusted_proxies == (
        "10.0.0.0/8", "::1")


def test_kbs_serve_refuses_a_bad_trusted_proxy_flag(tmp_path: Path) -> None:
    out = CliRunner().invoke(kbs_cli.app, ["serve", "--data", str(tmp_path),
                                           "--trusted-proxy", "*"])
    assert out.exit_code == 2 and "trusted proxy" in out.output


def test_uvicorn_proxy_handling_is_off_unless_proxies_are_listed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's fallback must never be read
    off = server_config(FastAPI(), ServingSettings())
    assert off.proxy_headers is False and off.forwarded_allow_ips == []
    on = server_config(FastAPI(), ServingSettings(trusted_proxies=("10.1.2.3", "10.9.0.0/16")))
    assert on.proxy_headers is True and on.forwarded_allow_ips == ["10.1.2.3", "10.9.0.0/16"]


def test_every_service_serves_with_the_shared_configuration(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """kbs, enclave, proxy and IdP: no forwarded headers, read deadlines, the guarded protocol."""
    configs: list[Any] = []

    class Captured:  # the uvicorn server every service runs, recording its configuration
        def __init__(self, config: Any, *args: Any) -> None:
            self.config, self.started = config, True

        def run(self) -> None:
            configs.append(self.config)

    # Every service serves through medclave.ops.lifecycle (graceful drain on SIGTERM), whose
    # server is uvicorn's with the drain added.
    monkeypatch.setattr("medclave.ops.lifecycle.DrainingServer", Captured)
    kbs_server.serve(KbsSettings(data_dir=tmp_path / "kbs", store="memory"))

    class Booted:
        service = object()
        mesh = None  # no attested micro-segmentation: plain loopback serving

        def close(self) -> None:
            return None

    def bare_app(service: object, settings: object) -> FastAPI:
        app = FastAPI()
        instrument(app, service="enclave")
        return app

    monkeypatch.setattr(enclave_server, "boot", lambda settings, **_: Booted())
    monkeypatch.setattr(enclave_server, "create_app", bare_app)
    enclave_server.serve(EnclaveSettings(data_dir=tmp_path / "enclave"))
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["sim"]\n')
    proxy_module.serve(proxy_module.ProxySettings(upstream="http://127.0.0.1:9",
                                                  policy_file=policy))
    idp_server.serve(idp_server.build_service(tmp_path / "idp", issuer="http://127.0.0.1:8800"),
                     idp_server.IdpSettings())
    assert len(configs) == 4
    for config in configs:
        assert config.proxy_headers is False and config.forwarded_allow_ips == []
        assert config.http is GuardedH11Protocol
        assert config.timeout_keep_alive == ServingSettings().keep_alive_seconds
        assert config.serving.header_timeout_seconds == ServingSettings().header_timeout_seconds


def test_no_service_starts_uvicorn_by_itself() -> None:
    """One home for the server configuration: serving.py; nothing calls uvicorn.run."""
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if ("uvicorn.run(" in (text := p.read_text(encoding="utf-8"))
                     or "uvicorn.Config(" in text) and p.name != "serving.py"]
    assert offenders == []
