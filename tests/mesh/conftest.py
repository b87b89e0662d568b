"""A mesh on 127.0.0.1: the real broker (mesh CA) over mutual TLS, workloads with sim evidence."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from medclave.attestation.sim import SimAuthority
from medclave.background import BackgroundServer
from medclave.kbs.app import create_app
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.mesh_ca import BrokerMesh
from medclave.kbs.service import KeyBroker
from medclave.kbs.store import MemoryKbsStore
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.mesh.tls import DenyList, MeshTls
from medclave.mesh.workload import Renewer, request_certificate, revocations_fetcher
from medclave.serving import MeshServing, mesh_peer
from tests.kbs.conftest import make_settings
from tests.kbs.helpers import sim_attester, sim_policy

TENANT = "stmary"
POLICY = """trust_domain = "stmary"
[[allow]]
from = "proxy"
to = "enclave"
[[allow]]
from = "enclave"
to = ["broker", "database"]
"""
MEASUREMENTS = {role: hashlib.sha384(f"medclave {role} build".encode()).digest()
                for role in ("proxy", "enclave", "database", "broker")}


@dataclass
class Mesh:
    url: str
    broker: KeyBroker
    ca_pem: bytes
    policy: SegmentationPolicy
    authority: SimAuthority
    state: BrokerMesh
    clients: list[httpx.Client]

    def workload(self, role: str, name: str = "w1", *, measurement: bytes | None = None,
                 lifetime: timedelta | None = None) -> tuple[MeshTls, Renewer]:
        identity = WorkloadId.of(TENANT, role, name)
        attester = sim_attester(self.authority, measurement=measurement or MEASUREMENTS[role])
        tls = MeshTls(identity, ca_pem=self.ca_pem, policy=self.policy)
        to_ca = httpx.Client(base_url=self.url, verify=tls.client_context(to_ca=True))
        deny_http = httpx.Client(base_url=self.url, verify=tls.client_context(to_ca=True))
        self.clients += [to_ca, deny_http]
        renewer = Renewer(tls, lambda: request_certificate(to_ca, identity, attester),
                          fraction=0.5, retry=0.2)
        renewer.renew_once()
        # a client made once the workload holds a certificate: the deny list is its tenant's
        tls.deny = DenyList(revocations_fetcher(deny_http, TENANT))
        tls.deny.refresh()
        return tls, renewer


@pytest.fixture
def authority(tmp_path: Path) -> SimAuthority:
    """Kept where an enclave booted with data_dir ``tmp_path/"enclave"`` finds it (sim)."""
    return SimAuthority.load_or_create(tmp_path / "enclave")


@pytest.fixture
def mesh(tmp_path: Path, authority: SimAuthority) -> Iterator[Mesh]:
    (tmp_path / "segmentation.toml").write_text(POLICY)
    (tmp_path / "mesh.toml").write_text(
        f'identity = "medclave://{TENANT}/broker/kbs-1"\npolicy = "segmentation.toml"\n'
        "denylist_seconds = 0.2\n")
    settings = make_settings(tmp_path, sim_roots=(authority.root_fingerprint,),
                             mesh_file=tmp_path / "mesh.toml")
    broker = build_broker(settings, store=MemoryKbsStore(), wrapper=AesGcmKek(os.urandom(32)))
    app = create_app(settings, broker=broker)
    state: BrokerMesh = app.state.mesh
    for role in ("proxy", "enclave", "database"):
        broker.set_policy(TENANT, f"kbs:///{TENANT}/mesh/{role}",
                          sim_policy(measurement=MEASUREMENTS[role]), client_id="test")
    with BackgroundServer(app, serving=settings, mesh=state.serving()) as server:
        mesh = Mesh(server.url, broker, state.issuer.ca.pem, state.tls.policy, authority, state,
                    [])
        yield mesh
        for client in mesh.clients:
            client.close()


def peer_app() -> FastAPI:
    """A service that answers with its caller's verified identity (the gate let it through)."""
    app = FastAPI()
    app.state.hits = 0

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str]:
        app.state.hits += 1
        peer = mesh_peer(request)
        return {"peer": str(peer.identity) if peer else ""}

    return app


@pytest.fixture
def serve() -> Iterator[list[BackgroundServer]]:
    started: list[BackgroundServer] = []
    yield started
    for server in started:
        server.stop()


def start(started: list[BackgroundServer], tls: MeshTls, app: FastAPI | None = None
          ) -> BackgroundServer:
    server = BackgroundServer(app or peer_app(), mesh=MeshServing(tls)).start()
    started.append(server)
    return server
