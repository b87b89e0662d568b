"""Issue 9 part 6: inputs that gave a 500, a hang or a traceback, each now a coded refusal.

- JSON nested 100,000 deep at the proxy's chat endpoint and the broker's owner routes (500 and a
  traceback): 400 ``input.malformed`` at every JSON entry point.
- A runtime integer of 2^64 (broker 503, a non-Medclave error in the client, the CLI blaming
  ``--nonce``): RFC 8785 has no exact form for it, so it is ``input.malformed`` /
  ``attestation.malformed`` everywhere.
- Half-open connections held forever: closed after the head or body deadline.
- A client leaving mid-body logged as an internal error with a traceback: one line,
  ``input.incomplete``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from medclave.attestation import sim
from medclave.attestation.policy import parse_policy
from medclave.auth.idp_server import build_service
from medclave.auth.idp_server import create_app as create_idp_app
from medclave.background import BackgroundServer
from medclave.cli.main import app as cli
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.client.verify import verify_enclave
from medclave.crypto.canonical import canonical_json, load_json
from medclave.errors import InputError, MedclaveError, PolicyError
from medclave.kbs.client import KbsClient
from medclave.kbs.store import MemoryKbsStore
from medclave.protocol import inference as proto
from medclave.serving import ServingSettings, read_limited_body
from tests.e2e.helpers import FakeEngine, start_enclave
from tests.e2e.helpers import sim_policy as enclave_policy
from tests.kbs.conftest import Clock, Live, make_settings, serve_broker
from tests.kbs.helpers import RESOURCE, provision, sim_attester, sim_policy, trusting

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
BIG = 2**64


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path_factory.mktemp("sim"))


@pytest.fixture
def broker(tmp_path: Path, authority: sim.SimAuthority) -> Iterator[Live]:
    settings = make_settings(tmp_path, sim_roots=(authority.root_fingerprint,))
    server, live = serve_broker(settings, store=MemoryKbsStore(), clock=Clock())
    with server:
        live.url = server.url
        yield live


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at INFO and up, uvicorn's own included (it does not propagate to root)."""
    caplog.set_level(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn_log.removeHandler(caplog.handler)


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR
            ] == []


# --- deep JSON at every JSON entry point -----------------------------------------------------


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
@pytest.mark.parametrize("method,path,owner", [
    ("POST", "/kbs/v1/release", False),
    ("PUT", "/kbs/v1/owner/resources/vendor/model-key/llama", True),
    ("POST", "/kbs/v1/owner/resources/vendor/model-key/llama/rotate", True),
    ("PUT", "/kbs/v1/owner/policies/vendor/model-key/llama", True),
])
def test_deep_json_at_the_broker(broker: Live, errors_logged: pytest.LogCaptureFixture,
                                 method: str, path: str, owner: bool, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {broker.token('vendor')}"} if owner else {}
    r = httpx.request(method, broker.url + path, content=body, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "input.malformed"
    no_traceback(errors_logged)


@pytest.fixture
def proxy() -> Iterator[str]:
    # Nothing listens upstream: a request that got past the proxy's parse would be a 502.
    session = EnclaveSession("http://127.0.0.1:9", enclave_policy())
    with BackgroundServer(create_proxy_app(session), name="test-proxy") as server:
        yield server.url
    session.close()


@pytest.mark.parametrize("path", [proto.CHAT_PATH, proto.COMPLETIONS_PATH])
@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT, b"{", b"\xff"], ids=["array", "object",
                                                                         "cut", "not-utf8"])
def test_deep_or_broken_json_at_the_proxy(proxy: str, errors_logged: pytest.LogCaptureFixture,
                                          path: str, body: bytes) -> None:
    r = httpx.post(proxy + path, content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "input.malformed"
    assert r.json()["error"]["type"] == "invalid_request_error"  # OpenAI-shaped
    no_traceback(errors_logged)


def test_the_proxy_answers_unknown_routes_with_a_code(proxy: str) -> None:
    r = httpx.get(proxy + "/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "input.no_route"
    r = httpx.delete(proxy + proto.CHAT_PATH)  # issue 10: 405 with Allow, not 400
    assert r.status_code == 405 and r.json()["error"]["code"] == "input.method_not_allowed"
    assert r.headers["allow"] == "POST"


def test_load_json_refuses_deep_nesting_as_input() -> None:
    for data in (DEEP, DEEP_OBJECT, b"{", b"\xff\xfe\x00"):
        with pytest.raises(InputError) as e:
            load_json(data)
        assert e.value.code == "input.malformed"
    assert load_json(b'{"a": [1, 2]}') == {"a": [1, 2]}


# --- integers (and other values) RFC 8785 cannot hold -----------------------------------------


@pytest.mark.parametrize("value", [2**53, -(2**53), BIG, float("nan"), float("inf"), {1: "a"},
                                   {"a": b"bytes"}])
def test_canonical_json_refuses_what_it_cannot_encode_exactly(value: Any) -> None:
    with pytest.raises(InputError) as e:
        canonical_json({"n": value})
    assert e.value.code == "input.malformed"


def test_canonical_json_at_the_edge_of_the_integer_domain() -> None:
    assert canonical_json([2**53 - 1, -(2**53 - 1)]) == b"[9007199254740991,-9007199254740991]"


def test_canonical_json_refuses_nesting_deeper_than_python_recurses() -> None:
    value: Any = 1
    for _ in range(10_000):
        value = [value]
    with pytest.raises(InputError):
        canonical_json(value)


def _bundle_json(authority: sim.SimAuthority, nonce: bytes, **runtime: Any) -> dict[str, Any]:
    """A real sim bundle for ``runtime``, as JSON: then its runtime is edited to carry 2^64."""
    bundle = sim.make_bundle(authority, nonce=nonce, runtime={"x": 1, **runtime})
    doc: dict[str, Any] = bundle.model_dump(mode="json")
    doc["runtime"]["x"] = BIG
    return doc


def test_a_2_64_runtime_at_the_broker_is_a_400(broker: Live, authority: sim.SimAuthority,
                                               errors_logged: pytest.LogCaptureFixture) -> None:
    provision(broker.url, broker.token("vendor"), policy=sim_policy())
    nonce = bytes.fromhex(httpx.post(broker.url + "/kbs/v1/challenge").json()["nonce"])
    body = {"resource": RESOURCE, "nonce": nonce.hex(), "evidence": _bundle_json(authority, nonce)}
    r = httpx.post(broker.url + "/kbs/v1/release", content=json.dumps(body),
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "input.malformed"
    assert broker.decisions[-1].code == "input.malformed"
    no_traceback(errors_logged)


def test_a_2_64_runtime_in_the_key_broker_client_is_a_medclave_error(
        broker: Live, authority: sim.SimAuthority) -> None:
    provision(broker.url, broker.token("vendor"), policy=sim_policy())
    with KbsClient(broker.url, sim_attester(authority), trusted=trusting(broker.broker),
                   runtime={"n": BIG}) as client, \
            pytest.raises(MedclaveError) as e:
        client.fetch(RESOURCE)
    assert e.value.code == "input.malformed"


def test_a_2_64_runtime_from_an_enclave_is_refused_by_the_client(
        authority: sim.SimAuthority) -> None:
    nonce = b"\x07" * 32
    data = json.dumps(_bundle_json(authority, nonce)).encode()
    with pytest.raises(MedclaveError) as e:
        verify_enclave(data, nonce=nonce, policy=enclave_policy(), now=datetime.now(UTC),
                       sim_roots=frozenset({authority.root_fingerprint}))
    assert e.value.code == "attestation.malformed"


def test_attest_verify_labels_a_2_64_runtime_as_malformed_evidence(
        authority: sim.SimAuthority, tmp_path: Path) -> None:
    nonce = b"\x07" * 32
    evidence = tmp_path / "bundle.json"
    evidence.write_text(json.dumps(_bundle_json(authority, nonce)))
    out = CliRunner().invoke(cli, ["attest", "verify", str(evidence), "--nonce", nonce.hex(),
                                   "--sim-root", authority.root_fingerprint, "--json"])
    assert out.exit_code == 2, out.output
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "attestation.malformed"
    assert "nonce" not in error["message"] and "2^53" in error["message"]
    # And a --nonce that is not hex is still named as such.
    out = CliRunner().invoke(cli, ["attest", "verify", str(evidence), "--nonce", "zz", "--json"])
    assert out.exit_code == 2 and "--nonce" in json.loads(out.stdout)["error"]["message"]


def test_a_policy_with_a_2_64_value_is_policy_invalid(broker: Live) -> None:
    doc = {"name": "p", "platforms": ["sim"], "max_evidence_age_seconds": BIG}
    with pytest.raises(PolicyError) as e:
        parse_policy(json.dumps(doc).encode())
    assert e.value.code == "policy.invalid"
    r = httpx.put(broker.url + "/kbs/v1/owner/policies/vendor/model-key/llama",
                  content=json.dumps({"appraisal": doc}),
                  headers={"Authorization": f"Bearer {broker.token('vendor')}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "policy.invalid"


# --- half-open connections -------------------------------------------------------------------

FAST = ServingSettings(header_timeout_seconds=0.5, body_timeout_seconds=0.5, keep_alive_seconds=1)
BOUND = 3.0  # the deadline plus generous slack for a loaded machine


def _echo_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await read_limited_body(request, 1024))}

    return app


def _closed_within(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closed ``sock`` (read EOF or reset); fails past ``limit``."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server held the connection open for {limit} s")
    return time.monotonic() - started


@pytest.fixture
def echo() -> Iterator[BackgroundServer]:
    with BackgroundServer(_echo_app(), serving=FAST) as server:
        yield server


@pytest.mark.parametrize("sent", [
    b"", b"POST /echo HTTP/1.1\r\nHost: x\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345",
], ids=["nothing", "half-a-head", "half-a-body"])
def test_half_open_connections_are_closed(echo: BackgroundServer, sent: bytes) -> None:
    socks = [socket.create_connection((echo.host, echo.port)) for _ in range(300)]
    try:
        for s in socks:
            s.sendall(sent)
        started = time.monotonic()
        for s in socks:
            _closed_within(s, max(0.1, BOUND - (time.monotonic() - started)))
        assert time.monotonic() - started >= 0.3  # closed by the deadline, not at once
    finally:
        for s in socks:
            s.close()


def test_a_trickled_head_does_not_extend_its_deadline(echo: BackgroundServer) -> None:
    with socket.create_connection((echo.host, echo.port)) as s:
        started = time.monotonic()
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        with pytest.raises(OSError):  # the server closes while bytes are still coming
            for i in range(len(head)):
                s.sendall(head[i:i + 1])
                time.sleep(0.02)
                assert time.monotonic() - started < BOUND
        assert time.monotonic() - started < BOUND


def test_a_pipelined_request_with_half_a_body_is_closed(echo: BackgroundServer) -> None:
    with socket.create_connection((echo.host, echo.port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
                  b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n123")
        _closed_within(s, BOUND)


def test_a_healthy_keep_alive_connection_is_served(echo: BackgroundServer) -> None:
    with httpx.Client(base_url=echo.url) as client:
        assert client.post("/echo", content=b"12345").json() == {"bytes": 5}
        time.sleep(0.3)  # under the keep-alive limit: the same connection serves again
        assert client.post("/echo", content=b"123").json() == {"bytes": 3}


def test_an_idle_keep_alive_connection_is_closed(echo: BackgroundServer) -> None:
    with socket.create_connection((echo.host, echo.port)) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        time.sleep(0.1)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        _closed_within(s, BOUND)


def test_the_brokers_settings_bound_its_connections(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, header_timeout_seconds=0.5)
    server, _ = serve_broker(settings, store=MemoryKbsStore(), clock=Clock())
    with server, socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"POST /kbs/v1/challenge HTTP/1.1\r\nHost: x\r\n")
        _closed_within(s, BOUND)


# --- a client that leaves mid-body ---------------------------------------------------------------


def _leave_mid_body(url: str, path: str, content_type: str = "application/json") -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: 1000\r\n\r\n".encode() + b'{"partial": ')
        time.sleep(0.2)


def _one_line(caplog: pytest.LogCaptureFixture) -> None:
    deadline = time.monotonic() + BOUND
    while not any("input.incomplete" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    time.sleep(0.2)  # anything else it would log
    lines = [r for r in caplog.records if "input.incomplete" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    no_traceback(caplog)
    assert not any("Traceback" in r.getMessage() or "Exception in ASGI" in r.getMessage()
                   for r in caplog.records)


def test_leaving_mid_body_at_the_broker(broker: Live,
                                        errors_logged: pytest.LogCaptureFixture) -> None:
    _leave_mid_body(broker.url, "/kbs/v1/release")
    _one_line(errors_logged)


def test_leaving_mid_body_at_the_proxy(proxy: str,
                                       errors_logged: pytest.LogCaptureFixture) -> None:
    _leave_mid_body(proxy, proto.CHAT_PATH)
    _one_line(errors_logged)


def test_leaving_mid_body_at_the_idp(tmp_path: Path,
                                     errors_logged: pytest.LogCaptureFixture) -> None:
    service = build_service(tmp_path / "idp", issuer="http://127.0.0.1:8800")
    with BackgroundServer(create_idp_app(service)) as server:
        _leave_mid_body(server.url, "/token", "application/x-www-form-urlencoded")
        _one_line(errors_logged)


def test_leaving_mid_body_at_the_enclave(tmp_path: Path,
                                         errors_logged: pytest.LogCaptureFixture) -> None:
    enclave = start_enclave(tmp_path / "enclave", None, engine=FakeEngine())
    try:
        _leave_mid_body(enclave.url, proto.OHTTP_PATH, "message/ohttp-chunked-req")
        _one_line(errors_logged)
    finally:
        enclave.stop()
