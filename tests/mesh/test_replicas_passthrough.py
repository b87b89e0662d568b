"""Enclave replicas in the mesh: a real HAProxy in ``mode tcp`` routes the proxy's TLS on its
server name (SNI) to the replica it names, never terminating it, so the proxy's mutual TLS runs
end to end to that replica; the proxy checks the replica's workload identity is the one it
meant (``mesh.peer_unexpected`` otherwise) and fails over when the handshake never completed.

Real pieces on 127.0.0.1: the broker as mesh CA (``mesh`` fixture), two enclaves booted with a
mesh file (their certificates on fresh sim evidence), HAProxy from Debian with the configuration
``ops/balancer.py`` renders (``tls_passthrough``), the proxy with its own workload certificate
and the wiring ``medclave proxy`` uses (``client.proxy.replica_tls``), the official ``openai``
client. The engines are spies (this is about routing and transport, tests/e2e/test_replicas.py
runs the real model behind the HTTP-mode balancer).
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import openai
import pytest
from fastapi import Request, Response

from medclave.background import BackgroundServer
from medclave.client.proxy import (
    ProxySettings,
    create_proxy_app,
    mesh_for,
    replica_tls,
    session_for,
)
from medclave.client.replicas import ReplicaSet
from medclave.enclave.app import create_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.model import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHA256
from medclave.enclave.server import MESH_OPEN_PATHS
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import MeshError
from medclave.mesh.tls import MeshTls
from medclave.mesh.workload import WorkloadMesh
from medclave.serving import MeshServing
from tests.e2e.helpers import FAKE_ANSWER, FakeEngine, sim_policy, write_commitment_key
from tests.e2e.replica_helpers import Cable, HAProxy
from tests.e2e.test_replicas import _haproxy_installed  # noqa: F401  (fails in CI, else skips)
from tests.mesh.conftest import MEASUREMENTS, TENANT, Mesh


@dataclass
class MeshReplica:
    """One enclave in the mesh, its workload identity ``medclave://stmary/enclave/NAME``."""

    name: str
    booted: Booted
    server: BackgroundServer
    engine: FakeEngine
    paths: list[str] = field(default_factory=list)  # every HTTP request it was sent

    def stop(self) -> None:
        self.server.stop()
        self.booted.close()


def _start_replica(tmp_path: Path, mesh: Mesh, name: str) -> MeshReplica:
    folder = tmp_path / name
    # The broker trusts the sim authority of the ``authority`` fixture: every replica reports
    # with it (distinct nonces, keys and certificates all the same).
    shutil.copytree(tmp_path / "enclave" / "sim", folder / "sim")
    (tmp_path / "mesh-ca.pem").write_bytes(mesh.ca_pem)
    mesh_file = tmp_path / f"{name}-mesh.toml"
    mesh_file.write_text(f'identity = "medclave://{TENANT}/enclave/{name}"\n'
                         'policy = "segmentation.toml"\nca_file = "mesh-ca.pem"\n'
                         f'ca_url = "{mesh.url}"\n')
    settings = EnclaveSettings(  # type: ignore[call-arg]
        data_dir=folder, platform="sim", sim_measurement=MEASUREMENTS["enclave"].hex(),
        audit_store="memory", commitment_key_file=write_commitment_key(folder / "tenant.key"),
        insecure_no_auth=True, mesh_file=mesh_file, standing_check_seconds=0)
    engine = FakeEngine()
    booted = boot(settings, engine_factory=lambda path, s: engine)
    assert booted.mesh is not None
    app = create_app(booted.service, settings)
    paths: list[str] = []

    @app.middleware("http")
    async def record(request: Request,
                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        paths.append(request.url.path)  # reached only past the mesh gate
        return await call_next(request)

    server = BackgroundServer(app, mesh=MeshServing(booted.mesh.tls, MESH_OPEN_PATHS)).start()
    return MeshReplica(name, booted, server, engine, paths)


@pytest.fixture
def replicas(tmp_path: Path, mesh: Mesh) -> Iterator[dict[str, MeshReplica]]:
    started: dict[str, MeshReplica] = {}
    try:
        for name in ("r1", "r2"):
            started[name] = _start_replica(tmp_path, mesh, name)
        yield started
    finally:
        for r in started.values():
            r.stop()


@pytest.fixture
def proxy_tls(mesh: Mesh) -> MeshTls:
    tls, _ = mesh.workload("proxy", "proxy-1")
    return tls


class Proxy:
    """The proxy as ``medclave proxy --replica r1 --replica r2`` with a mesh file builds it
    (``ProxySettings``, ``mesh_for``, ``session_for``), or around a given workload's TLS."""

    def __init__(self, balancer: HAProxy, names: list[str], mesh: Mesh, tls: MeshTls | None,
                 folder: Path | None = None) -> None:
        upstream = f"https://127.0.0.1:{balancer.port}"
        self.mesh: WorkloadMesh | None = None
        if tls is None:
            assert folder is not None
            settings = _proxy_settings(folder, mesh, upstream, names)
            self.mesh = mesh_for(settings)
            assert self.mesh is not None
            built = session_for(settings, self.mesh)
            assert isinstance(built, ReplicaSet)
            self.set = built
        else:
            self.set = ReplicaSet(upstream, names,
                                  sim_policy(measurement=MEASUREMENTS["enclave"].hex()),
                                  sim_roots=frozenset({mesh.authority.root_fingerprint}),
                                  down_after_failure=timedelta(seconds=30), timeout=30,
                                  tls_for=replica_tls(tls))
        self.server = BackgroundServer(create_proxy_app(self.set), name="test-proxy").start()
        self.client = openai.OpenAI(base_url=f"{self.server.url}/v1", api_key="unused",
                                    max_retries=0, timeout=30)

    def ask(self, prompt: str) -> str:
        raw = self.client.chat.completions.with_raw_response.create(
            model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": prompt}])
        assert raw.parse().choices[0].message.content == FAKE_ANSWER
        return raw.headers["medclave-replica"]

    def close(self) -> None:
        self.server.stop()
        self.set.close()
        if self.mesh is not None:
            self.mesh.close()


def _proxy_settings(folder: Path, mesh: Mesh, upstream: str, names: list[str]) -> ProxySettings:
    """The proxy's own files: its appraisal policy and its mesh file (sim evidence from the
    ``authority`` fixture's folder, its certificate from the broker at start)."""
    policy = folder / "policy.toml"
    policy.write_text(
        'name = "test-hospital"\nplatforms = ["sim"]\n'
        f'model_digests = ["{DEFAULT_MODEL_SHA256}"]\n'
        "[platform.sim.reference_values]\n"
        f'measurement = ["{MEASUREMENTS["enclave"].hex()}"]\n')
    mesh_file = folder / "proxy-mesh.toml"
    mesh_file.write_text(f'identity = "medclave://{TENANT}/proxy/proxy-1"\n'
                         'policy = "segmentation.toml"\nca_file = "mesh-ca.pem"\n'
                         f'ca_url = "{mesh.url}"\nplatform = "sim"\nsim_dir = "enclave"\n'
                         f'sim_measurement = "{MEASUREMENTS["proxy"].hex()}"\n')
    return ProxySettings(  # type: ignore[call-arg]
        upstream=upstream, policy_file=policy, replicas=tuple(names), mesh_file=mesh_file,
        sim_roots=(mesh.authority.root_fingerprint,), timeout_seconds=30,
        replica_down_seconds=30, data_dir=folder / "proxy")


def _posts(replica: MeshReplica) -> int:
    return replica.paths.count("/v1/ohttp")


def test_two_mesh_replicas_serve_the_openai_client_through_tcp_haproxy(
        tmp_path: Path, mesh: Mesh, replicas: dict[str, MeshReplica]) -> None:
    lb = HAProxy(tmp_path / "haproxy", {n: r.server.port for n, r in replicas.items()},
                 tls_passthrough=True)
    proxy = Proxy(lb, ["r1", "r2"], mesh, None, tmp_path)  # as `medclave proxy` builds it
    try:
        served = [proxy.ask(f"question {i}") for i in range(6)]
        with proxy.client.chat.completions.with_streaming_response.create(
                model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "stream"}],
                stream=True) as streamed:
            events = [line for line in streamed.iter_lines() if line]
    finally:
        proxy.close()
        lb.stop()
    assert sorted(set(served)) == ["r1", "r2"]
    assert events[-1] == "data: [DONE]"
    # The replica the proxy named is the one whose engine ran it: each got its own requests.
    for name, r in replicas.items():
        assert len(r.engine.calls) == served.count(name) + (streamed.headers[
            "medclave-replica"] == name)
        assert r.paths.count("/v1/attestation") == 1  # each attested on its own
        assert _posts(r) == len(r.engine.calls)
    # HAProxy passed TLS through in tcp mode: one backend per replica, chosen by the SNI; its
    # readiness probe (a bare TCP connection, no ClientHello) was forwarded nowhere.
    used = {(b, s) for b, s, _ in lb.connections()}
    assert used == {("replica-r1", "r1"), ("replica-r2", "r2"), ("enclaves", "<NOSRV>")}
    keys = {n: proxy.set.session(n).enclave.key_config for n in ("r1", "r2")}  # type: ignore[union-attr]
    assert keys["r1"].public_key != keys["r2"].public_key


def test_a_balancer_that_sends_r1s_name_to_r2_is_caught_by_the_mesh(
        tmp_path: Path, mesh: Mesh, replicas: dict[str, MeshReplica], proxy_tls: MeshTls) -> None:
    """r1's server name goes to r2: r2's certificate is valid, its role allowed, but it is not
    r1: the proxy refuses it (``mesh.peer_unexpected``) right after the handshake, before a
    byte of a request is sent, and serves from r2 under r2's own name only."""
    r2 = replicas["r2"].server.port
    lb = HAProxy(tmp_path / "haproxy-misroute", {"r1": r2, "r2": r2}, tls_passthrough=True)
    proxy = Proxy(lb, ["r1", "r2"], mesh, proxy_tls)
    try:
        with pytest.raises(MeshError) as caught:
            proxy.set.session("r1").attest()
        served = [proxy.ask(f"question {i}") for i in range(4)]
        status = proxy.set.replicas()
        alone = Proxy(lb, ["r1"], mesh, proxy_tls)  # r1 only: nothing to fail over to
        try:
            with pytest.raises(openai.APIStatusError) as refused:
                alone.ask("only r1")
            alone_status = alone.set.replicas()
        finally:
            alone.close()
    finally:
        proxy.close()
        lb.stop()
    assert caught.value.code == "mesh.peer_unexpected"
    assert caught.value.context["sent"] is False
    assert "medclave://stmary/enclave/r2" in caught.value.detail
    assert served == ["r2"] * 4
    assert status["r1"]["trust"]["state"] == "failed"
    assert status["r1"]["trust"]["code"] == "mesh.peer_unexpected"
    assert refused.value.status_code == 502
    assert refused.value.body["code"] == "client.no_replica"  # type: ignore[index]
    assert alone_status["r1"]["trust"]["code"] == "mesh.peer_unexpected"  # why: status
    # Nothing meant for r1 reached r2: one attestation (its own) and its own four requests.
    assert replicas["r2"].paths.count("/v1/attestation") == 1
    assert _posts(replicas["r2"]) == 4 and len(replicas["r2"].engine.calls) == 4
    assert replicas["r1"].paths == [] and replicas["r1"].engine.calls == []
    # The balancer did send r1's connections to r2 (the misroute happened, and was caught).
    assert ("replica-r1", "r1") in {(b, s) for b, s, _ in lb.connections()}


def test_a_killed_replica_its_requests_go_to_the_other(
        tmp_path: Path, mesh: Mesh, replicas: dict[str, MeshReplica], proxy_tls: MeshTls) -> None:
    """r1 dies (every connection reset, new ones refused): HAProxy reaches no server and closes
    the proxy's connection before the TLS handshake with a replica completed, which the proxy
    counts as never sent: every later request is answered by r2, none lost, none twice."""
    cable = Cable(replicas["r1"].server.port)
    lb = HAProxy(tmp_path / "haproxy-kill", {"r1": cable.port,
                                             "r2": replicas["r2"].server.port},
                 tls_passthrough=True)
    proxy = Proxy(lb, ["r1", "r2"], mesh, proxy_tls)
    try:
        before = [proxy.ask(f"before {i}") for i in range(4)]
        assert sorted(set(before)) == ["r1", "r2"]
        r1_calls = len(replicas["r1"].engine.calls)
        cable.cut()
        after = [proxy.ask(f"after {i}") for i in range(4)]
        status = proxy.set.replicas()
    finally:
        proxy.close()
        lb.stop()
        cable.close()
    assert after == ["r2"] * 4
    assert len(replicas["r1"].engine.calls) == r1_calls  # nothing more reached r1
    assert len(replicas["r2"].engine.calls) == before.count("r2") + 4  # each once
    assert status["r1"]["up"] is False and status["r2"]["up"] is True
