"""The real stack in a mesh: the openai client -> proxy -> enclave over mutual TLS, the enclave
booted with ``mesh_file`` (its certificate on fresh sim evidence from the broker's mesh CA), the
proxy's session holding the proxy's certificate; another role is refused by the enclave."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai

from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app
from medclave.enclave.boot import boot
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.enclave.server import MESH_OPEN_PATHS
from medclave.enclave.settings import EnclaveSettings
from medclave.kbs.revocation import RevocationIn
from medclave.serving import MeshServing
from tests.e2e.helpers import FAKE_ANSWER, FakeEngine, sim_policy, write_commitment_key
from tests.kbs.helpers import sim_policy as kbs_sim_policy
from tests.mesh.conftest import MEASUREMENTS, TENANT, Mesh


def _mesh_file(tmp_path: Path, mesh: Mesh, role: str) -> Path:
    (tmp_path / "mesh-ca.pem").write_bytes(mesh.ca_pem)
    path = tmp_path / f"{role}-mesh.toml"
    path.write_text(f'identity = "medclave://{TENANT}/{role}/{role}-1"\n'
                    'policy = "segmentation.toml"\nca_file = "mesh-ca.pem"\n'
                    f'ca_url = "{mesh.url}"\n')
    return path


AUDIT_KEY = f"kbs:///{TENANT}/audit-key/enclave-1"


def test_proxy_reaches_the_enclave_over_mutual_tls_and_nothing_else_does(
        mesh: Mesh, tmp_path: Path) -> None:
    folder = tmp_path / "enclave"
    # the enclave's audit key comes from the broker: boot reaches it over the mesh
    mesh.broker.create_resource(TENANT, AUDIT_KEY, b"a" * 32, client_id="test")
    mesh.broker.set_policy(TENANT, AUDIT_KEY, kbs_sim_policy(measurement=MEASUREMENTS["enclave"]),
                           client_id="test")
    settings = EnclaveSettings(  # type: ignore[call-arg]
        data_dir=folder, platform="sim", sim_measurement=MEASUREMENTS["enclave"].hex(),
        audit_store="memory", commitment_key_file=write_commitment_key(folder / "tenant.key"),
        insecure_no_auth=True, mesh_file=_mesh_file(tmp_path, mesh, "enclave"),
        kbs_url=mesh.url, kbs_keys=(mesh.broker.signer.public_key.hex(),),
        audit_key_resource=AUDIT_KEY, audit_origin="stmary.example/enclave-1",
        standing_check_seconds=0)
    booted = boot(settings, engine_factory=lambda path, s: FakeEngine())
    assert booted.mesh is not None and booted.mesh.tls.rotations == 1
    released = [d for d in mesh.broker.store.decisions(owner=TENANT, limit=50)
                if d.action == "release" and d.resource == AUDIT_KEY]
    assert [d.outcome for d in released] == ["allowed"]
    enclave = BackgroundServer(create_app(booted.service, settings),
                               mesh=MeshServing(booted.mesh.tls, MESH_OPEN_PATHS)).start()
    proxy_tls, _ = mesh.workload("proxy")
    session = EnclaveSession(enclave.url, sim_policy(measurement=MEASUREMENTS["enclave"].hex()),
                             sim_roots=frozenset({mesh.authority.root_fingerprint}),
                             tls=proxy_tls.client_context("enclave"))
    proxy = BackgroundServer(create_proxy_app(session), name="test-proxy").start()
    try:
        assert enclave.url.startswith("https://")
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "status?"}])
        assert answer.choices[0].message.content == FAKE_ANSWER
        # a client without a certificate reaches the health probes only; a database workload
        # is refused by the enclave
        with httpx.Client(verify=False) as bare:  # it checks nothing and presents nothing
            r = bare.get(enclave.url + "/medclave/attestation")
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "mesh.peer_unauthenticated"
            assert bare.get(enclave.url + "/healthz").status_code == 200
        database, _ = mesh.workload("database")
        with httpx.Client(verify=database._current()[1]) as other:
            r = other.get(enclave.url + "/medclave/attestation")
        assert r.status_code == 403 and r.json()["error"]["code"] == "mesh.peer_not_allowed"
        # its standing checks go over the mesh too; once its measurement is revoked, the
        # broker answers "revoked" and then refuses its certificate at the next handshake
        assert booted.standing is not None and booted.standing.check_once() == "good"
        mesh.broker.revoke(TENANT, RevocationIn(kind="measurement",
                                                value=MEASUREMENTS["enclave"].hex()),
                           client_id="test")
        assert booted.standing.check_once() == "revoked"
        booted.mesh.tls.deny.refresh()  # type: ignore[union-attr]
        time.sleep(0.5)  # the broker's own deny list (refreshed every 0.2 s here)
        with httpx.Client(verify=booted.mesh.tls.client_context("broker")) as kbs:
            r = kbs.post(mesh.url + "/kbs/v1/standing", json={})
        assert r.status_code == 403 and r.json()["error"]["code"] == "mesh.peer_revoked"
    finally:
        proxy.stop()
        session.close()
        enclave.stop()
        booted.close()
