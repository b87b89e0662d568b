"""Client-side verification of an enclave's evidence: the positive path, its flipped-byte twin,
every field of the binding, and mutated bundles that must never verify as something else."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import sim
from medclave.client.session import error_from_body
from medclave.client.verify import MAX_ATTESTATION_BYTES, verify_enclave
from medclave.crypto.ohttp import OhttpKeyPair
from medclave.errors import (
    AttestationError,
    AuthError,
    ClientError,
    CryptoError,
    MedclaveError,
    PolicyError,
)
from tests.conftest import flip
from tests.e2e.helpers import MEASUREMENT, now, sim_policy

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DIGEST = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def key() -> OhttpKeyPair:
    return OhttpKeyPair.generate(7)


def _runtime(key: OhttpKeyPair) -> dict[str, object]:
    return {"service": "medclave-inference/1",
            "ohttp_key_config": base64.b64encode(key.config.encode()).decode(),
            "model_digest": DIGEST, "model_id": "smollm2-135m-instruct", "engine": "llama.cpp",
            "engine_build": "llama-cpp-python/0.3.36@sysinfo-x",
            "audit_public_key": base64.b64encode(b"\x01" * 32).decode(),
            "audit_origin": "medclave-enclave/test"}


def _bundle(authority: sim.SimAuthority, key: OhttpKeyPair, nonce: bytes,
            runtime: dict[str, object] | None = None) -> bytes:
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime or _runtime(key),
                             measurement=bytes.fromhex(MEASUREMENT))
    return bundle.model_dump_json().encode()


def _verify(data: bytes, nonce: bytes, authority: sim.SimAuthority, **kw: object) -> object:
    return verify_enclave(data, nonce=nonce, policy=kw.pop("policy", sim_policy()),  # type: ignore[arg-type]
                          now=now(), sim_roots=frozenset({authority.root_fingerprint}), **kw)  # type: ignore[arg-type]


def test_verified_evidence_pins_the_bound_key(authority: sim.SimAuthority, key: OhttpKeyPair
                                             ) -> None:
    nonce = os.urandom(32)
    enclave = verify_enclave(_bundle(authority, key, nonce), nonce=nonce, policy=sim_policy(),
                             now=now(), sim_roots=frozenset({authority.root_fingerprint}))
    assert enclave.key_config == key.config
    assert (enclave.platform, enclave.secure, enclave.measurement) == ("sim", False, MEASUREMENT)
    assert enclave.model_digest == DIGEST
    assert "NOT a real TEE" in enclave.summary()["warning"]


def test_the_flipped_byte_twin_is_refused(authority: sim.SimAuthority, key: OhttpKeyPair) -> None:
    nonce = os.urandom(32)
    bundle = json.loads(_bundle(authority, key, nonce))
    evidence = base64.b64decode(bundle["evidence"])
    bundle["evidence"] = base64.b64encode(flip(evidence, 0x90)).decode()  # measurement byte
    with pytest.raises(AttestationError) as caught:
        _verify(json.dumps(bundle).encode(), nonce, authority)
    assert caught.value.code == "attestation.signature_invalid"


@pytest.mark.parametrize("field", ["ohttp_key_config", "model_digest", "engine_build",
                                   "audit_public_key", "audit_origin"])
def test_every_runtime_field_is_bound(authority: sim.SimAuthority, key: OhttpKeyPair,
                                      field: str) -> None:
    nonce = os.urandom(32)
    bundle = json.loads(_bundle(authority, key, nonce))
    other = _runtime(OhttpKeyPair.generate(7))
    other["model_digest"] = "cd" * 32
    other["engine_build"] = "llama-cpp-python/0.3.36@sysinfo-y"
    other["audit_public_key"] = base64.b64encode(b"\x02" * 32).decode()
    other["audit_origin"] = "medclave-enclave/rogue"
    bundle["runtime"][field] = other[field]
    with pytest.raises(AttestationError) as caught:
        _verify(json.dumps(bundle).encode(), nonce, authority)
    assert caught.value.code == "attestation.binding_mismatch"


def test_freshness_and_pinning(authority: sim.SimAuthority, key: OhttpKeyPair) -> None:
    nonce = os.urandom(32)
    data = _bundle(authority, key, nonce)
    with pytest.raises(AttestationError) as stale:
        _verify(data, os.urandom(32), authority)
    assert stale.value.code == "attestation.nonce_mismatch"
    with pytest.raises(AttestationError) as unpinned:
        verify_enclave(data, nonce=nonce, policy=sim_policy(), now=now())
    assert unpinned.value.code == "attestation.root_untrusted"
    with pytest.raises(PolicyError) as refused:
        _verify(data, nonce, authority, policy=sim_policy(platforms=("sev-snp",)))
    assert refused.value.code == "policy.platform_not_allowed"


def test_a_bundle_without_an_inference_runtime_is_refused(authority: sim.SimAuthority,
                                                          key: OhttpKeyPair) -> None:
    nonce = os.urandom(32)
    runtime = {k: v for k, v in _runtime(key).items() if k != "ohttp_key_config"}
    with pytest.raises(AttestationError) as caught:
        _verify(_bundle(authority, key, nonce, runtime), nonce, authority)
    assert caught.value.code == "attestation.malformed"
    with pytest.raises(AttestationError):
        _verify(b"x" * (MAX_ATTESTATION_BYTES + 1), nonce, authority)


@pytest.fixture(scope="module")
def honest(authority: sim.SimAuthority, key: OhttpKeyPair) -> tuple[bytes, bytes]:
    nonce = os.urandom(32)
    return _bundle(authority, key, nonce), nonce


@FUZZ
@given(position=st.integers(min_value=0), value=st.integers(0, 255))
def test_a_mutated_bundle_never_verifies_as_anything_else(
        honest: tuple[bytes, bytes], authority: sim.SimAuthority, position: int,
        value: int) -> None:
    data, nonce = honest
    mutated = bytearray(data)
    mutated[position % len(mutated)] = value
    try:
        enclave = _verify(bytes(mutated), nonce, authority)
    except MedclaveError:
        return
    # Only a mutation that changes no meaning (a base64 bit the decoder ignores) may pass.
    original = _verify(data, nonce, authority)
    assert enclave.key_config == original.key_config  # type: ignore[attr-defined]
    assert enclave.runtime == original.runtime  # type: ignore[attr-defined]
    assert enclave.evidence_sha256 == original.evidence_sha256  # type: ignore[attr-defined]


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(MedclaveError):
        verify_enclave(data, nonce=b"n" * 32, policy=sim_policy(), now=now(),
                       sim_roots=frozenset({"00" * 32}))


@pytest.mark.parametrize(("status", "body", "kind", "code"), [
    (400, b'{"error":{"code":"crypto.key_unknown","message":"x"}}', CryptoError,
     "crypto.key_unknown"),
    (401, b'{"error":{"code":"auth.token_expired"}}', AuthError, "auth.token_expired"),
    (500, b'{"error":{"code":"no.such.code"}}', ClientError, "client.upstream_failed"),
    (502, b"<html>bad gateway</html>", ClientError, "client.upstream_failed"),
])
def test_error_bodies_map_to_catalogue_codes(status: int, body: bytes, kind: type,
                                             code: str) -> None:
    error = error_from_body(status, body)
    assert isinstance(error, kind) and error.code == code


def test_a_policy_file_is_loaded_by_path(tmp_path: Path, authority: sim.SimAuthority,
                                         key: OhttpKeyPair) -> None:
    from medclave.client import MedclaveClient

    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["sim"]\n')
    client = MedclaveClient("http://127.0.0.1:9", policy=policy)
    with pytest.raises(ClientError) as caught:
        client.attestation  # noqa: B018 - nothing listens there
    assert caught.value.code == "client.upstream_failed"
    client.close()


def test_max_evidence_age_is_checked_against_the_nonce_issue_time(
        authority: sim.SimAuthority, key: OhttpKeyPair) -> None:
    from datetime import timedelta

    policy = sim_policy().model_copy(update={"max_evidence_age_seconds": 30})
    nonce = os.urandom(32)
    data = _bundle(authority, key, nonce)
    assert _verify(data, nonce, authority, policy=policy, nonce_issued=now() - timedelta(seconds=2))
    with pytest.raises(PolicyError) as info:
        _verify(data, nonce, authority, policy=policy, nonce_issued=now() - timedelta(minutes=5))
    assert info.value.code == "policy.evidence_stale"
