"""The mesh CA issues only to attested workloads: evidence that fails verification (a flipped
signed byte, real hardware evidence that binds another nonce), a key the evidence does not bind,
a measurement the tenant's role policy does not list, or a role with no policy get nothing; every
decision is recorded."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.background import BackgroundServer
from medclave.kbs.app import create_app
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.service import KeyBroker
from medclave.kbs.store import MemoryKbsStore
from medclave.mesh.certs import CLAIMS_OID, make_csr, new_key
from medclave.mesh.policy import WorkloadId
from medclave.mesh.workload import mesh_runtime
from medclave.protocol.evidence import EvidenceBundle
from tests.kbs.conftest import Clock, make_settings
from tests.kbs.helpers import sim_policy
from tests.kbs.test_release_snp import WHEN, snp_bundle
from tests.mesh.conftest import MEASUREMENTS, POLICY, TENANT

ENCLAVE = WorkloadId.of(TENANT, "enclave", "e1")
Post = Callable[..., httpx.Response]


def _serve(tmp_path: Path, authority: sim.SimAuthority, clock: Clock
           ) -> tuple[BackgroundServer, KeyBroker]:
    # The CA routes over plain loopback HTTP: issuance itself is what is under test here.
    (tmp_path / "segmentation.toml").write_text(POLICY)
    (tmp_path / "mesh.toml").write_text(
        f'identity = "medclave://{TENANT}/broker/kbs-1"\npolicy = "segmentation.toml"\n')
    settings = make_settings(tmp_path, sim_roots=(authority.root_fingerprint,),
                             mesh_file=tmp_path / "mesh.toml")
    broker = build_broker(settings, store=MemoryKbsStore(), wrapper=AesGcmKek(b"\x01" * 32),
                          clock=clock)
    return BackgroundServer(create_app(settings, broker=broker), serving=settings), broker


def _ask(url: str, bundle_for: Callable[[bytes, dict[str, Any]], EvidenceBundle], *,
         identity: WorkloadId = ENCLAVE, csr_identity: WorkloadId | None = None,
         bind_other_key: bool = False) -> httpx.Response:
    key, other = new_key(), new_key()
    nonce = bytes.fromhex(httpx.post(url + "/kbs/v1/challenge").json()["nonce"])
    runtime = mesh_runtime(identity, (other if bind_other_key else key).public_key())
    bundle = bundle_for(nonce, runtime)
    return httpx.post(url + "/kbs/v1/mesh/certificate", json={
        "nonce": nonce.hex(), "evidence": bundle.model_dump(mode="json"),
        "csr": make_csr(key, csr_identity or identity).decode()})


def _sim(authority: sim.SimAuthority, measurement: bytes = MEASUREMENTS["enclave"]
         ) -> Callable[[bytes, dict[str, Any]], EvidenceBundle]:
    def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        return sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=measurement)
    return attest


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path_factory.mktemp("sim"))


def test_issuance_needs_verified_bound_evidence_and_the_role_policy(
        tmp_path: Path, authority: sim.SimAuthority) -> None:
    server, broker = _serve(tmp_path, authority, Clock())
    with server:
        # no policy for the role yet: nothing is issued by default
        r = _ask(server.url, _sim(authority))
        assert r.status_code == 403 and _code(r) == "kbs.policy_missing"
        broker.set_policy(TENANT, f"kbs:///{TENANT}/mesh/enclave",
                          sim_policy(measurement=MEASUREMENTS["enclave"]), client_id="t")
        r = _ask(server.url, _sim(authority))
        assert r.status_code == 200, r.text
        cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [ENCLAVE.uri]
        assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 3660
        claims_der = cert.extensions.get_extension_for_oid(CLAIMS_OID).value.value  # type: ignore[attr-defined]
        claims = json.loads(claims_der[claims_der.index(b"{"):])
        assert claims["measurement"] == [MEASUREMENTS["enclave"].hex()]
        # another measurement than the role's policy lists
        r = _ask(server.url, _sim(authority, MEASUREMENTS["proxy"]))
        assert r.status_code == 403 and _code(r) == "attestation.measurement_mismatch"
        # the evidence binds another key than the request's
        r = _ask(server.url, _sim(authority), bind_other_key=True)
        assert r.status_code == 400 and _code(r) == "mesh.key_not_bound"
        # the evidence binds another identity than the request's (a role the policy may allow)
        r = _ask(server.url, _sim(authority), csr_identity=WorkloadId.of(TENANT, "enclave", "x"))
        assert r.status_code == 400 and _code(r) == "mesh.key_not_bound"

        # one signed byte flipped: the sim signature no longer verifies
        def flipped(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
            bundle = _sim(authority)(nonce, runtime)
            raw = bytearray(base64.b64decode(bundle.evidence))
            raw[len(raw) // 3] ^= 0x01
            return bundle.model_copy(update={"evidence": base64.b64encode(bytes(raw)).decode()})

        r = _ask(server.url, flipped)
        assert r.status_code in (400, 403) and _code(r).startswith("attestation.")
        decisions = broker.store.decisions(owner="", limit=20)
    codes = [d.code for d in decisions if d.action == "mesh_issue"]
    assert None in codes and "mesh.key_not_bound" in codes and "kbs.policy_missing" in codes


@pytest.mark.vectors
def test_real_snp_evidence_verifies_then_fails_the_binding_and_its_twin_fails_the_signature(
        tmp_path: Path, authority: sim.SimAuthority, vectors: Path) -> None:
    clock = Clock(WHEN)
    server, broker = _serve(tmp_path, authority, clock)
    broker.set_policy(TENANT, f"kbs:///{TENANT}/mesh/enclave",
                      ReleasePolicy(appraisal=AppraisalPolicy(name="snp", platforms=("sev-snp",))),
                      client_id="t")
    with server:
        r = _ask(server.url, lambda n, rt: snp_bundle(vectors, n, rt))
        assert r.status_code == 403 and _code(r) == "attestation.binding_mismatch"
        twin = _ask(server.url, lambda n, rt: snp_bundle(vectors, n, rt, flip=0x50))
        assert twin.status_code in (400, 403)
        assert _code(twin) == "attestation.signature_invalid"
    assert datetime.now(UTC) > WHEN  # the broker ran on the vector's time, not ours
