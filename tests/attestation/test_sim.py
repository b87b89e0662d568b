"""sim: the same SNP verification code, anchored at a local root, refused unless asked for."""

from __future__ import annotations

import base64
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import registry, sim
from medclave.attestation.policy import appraise, default_policy, parse_policy
from medclave.attestation.verifier import verify_bundle, verify_raw
from medclave.errors import AttestationError, MedclaveError, PolicyError
from tests.conftest import flip

NOW = datetime.now(UTC)
NONCE = bytes(range(32))
RUNTIME = {"model_digest": "ab" * 32, "engine": "llama.cpp", "ephemeral_key": "AAAA"}


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path_factory.mktemp("data"))


def roots(a: sim.SimAuthority) -> frozenset[str]:
    return frozenset({a.root_fingerprint})


def test_bundle_verifies_with_its_root_and_says_it_is_not_secure(authority: sim.SimAuthority) -> None:
    bundle = sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME)
    v = verify_bundle(bundle, now=NOW, expected_nonce=NONCE, sim_roots=roots(authority))
    assert v.platform == "sim" and v.secure is False
    assert v.claims["sim"] == sim.SIM_LABEL
    assert v.claims["measurement"] == sim.code_measurement().hex()
    assert v.claims["runtime"] == RUNTIME
    assert [c.name for c in v.checks][-1] == "binding" and all(c.ok for c in v.checks)


def test_refused_without_a_trusted_sim_root(authority: sim.SimAuthority) -> None:
    bundle = sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME)
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle, now=NOW, expected_nonce=NONCE)
    assert info.value.code == "attestation.root_untrusted"


def test_refused_under_another_sim_root(authority: sim.SimAuthority, tmp_path: Path) -> None:
    other = sim.SimAuthority.load_or_create(tmp_path)
    bundle = sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME)
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle, now=NOW, expected_nonce=NONCE, sim_roots=roots(other))
    assert info.value.code == "attestation.root_untrusted"


def test_sim_report_never_passes_as_real_snp(authority: sim.SimAuthority) -> None:
    report = sim.make_report(authority, bytes(64))
    with pytest.raises(AttestationError) as info:
        verify_raw(report, now=NOW, platform="sev-snp",
                   certificates=[p.encode() for p in authority.chain_pem()])
    assert info.value.code == "attestation.root_untrusted"


def test_detected_as_sim_not_snp(authority: sim.SimAuthority) -> None:
    assert registry.detect(sim.make_report(authority, bytes(64))) == "sim"


def test_flipped_signed_byte_is_refused(authority: sim.SimAuthority) -> None:
    bundle = sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME)
    raw = base64.b64decode(bundle.evidence)
    tampered = bundle.model_copy(update={"evidence": base64.b64encode(flip(raw, 0x90)).decode()})
    with pytest.raises(AttestationError) as info:
        verify_bundle(tampered, now=NOW, expected_nonce=NONCE, sim_roots=roots(authority))
    assert info.value.code == "attestation.signature_invalid"


def test_runtime_not_bound_is_refused(authority: sim.SimAuthority) -> None:
    bundle = sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME)
    swapped = bundle.model_copy(update={"runtime": {**RUNTIME, "ephemeral_key": "BBBB"}})
    with pytest.raises(AttestationError) as info:
        verify_bundle(swapped, now=NOW, expected_nonce=NONCE, sim_roots=roots(authority))
    assert info.value.code == "attestation.binding_mismatch"


def test_stale_nonce_is_refused(authority: sim.SimAuthority) -> None:
    bundle = sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME)
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle, now=NOW, expected_nonce=b"\x01" * 32, sim_roots=roots(authority))
    assert info.value.code == "attestation.nonce_mismatch"


def test_default_policy_refuses_sim_and_a_sim_policy_accepts_it(authority: sim.SimAuthority) -> None:
    v = verify_bundle(sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME), now=NOW,
                      expected_nonce=NONCE, sim_roots=roots(authority))
    with pytest.raises(PolicyError) as info:
        appraise(v, default_policy(), now=NOW)
    assert info.value.code == "policy.platform_not_allowed"
    assert appraise(v, parse_policy(b'platforms = ["sim"]'), now=NOW).accepted


def test_debug_sim_is_refused_by_policy(authority: sim.SimAuthority) -> None:
    v = verify_bundle(sim.make_bundle(authority, nonce=NONCE, runtime=RUNTIME, debug=True), now=NOW,
                      expected_nonce=NONCE, sim_roots=roots(authority))
    assert v.claims["debug"] is True
    with pytest.raises(PolicyError) as info:
        appraise(v, parse_policy(b'platforms = ["sim"]'), now=NOW)
    assert info.value.code == "policy.debug_forbidden"


def test_authority_persists_with_a_private_key_file(tmp_path: Path) -> None:
    a = sim.SimAuthority.load_or_create(tmp_path)
    b = sim.SimAuthority.load_or_create(tmp_path)
    assert a.root_fingerprint == b.root_fingerprint
    mode = stat.S_IMODE((tmp_path / "sim" / "vcek.key").stat().st_mode)
    assert mode == 0o600


def test_measurement_is_stable_and_sha384() -> None:
    assert sim.code_measurement() == sim.code_measurement()
    assert len(sim.code_measurement()) == 48


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(0, 0x4A0 - 1), mask=st.integers(1, 255))
def test_mutated_sim_reports_never_verify(authority: sim.SimAuthority, offset: int, mask: int) -> None:
    report = sim.make_report(authority, bytes(64))
    try:
        verify_raw(flip(report, offset, mask), now=NOW, platform="sim",
                   certificates=[p.encode() for p in authority.chain_pem()],
                   sim_roots=roots(authority))
    except MedclaveError:
        return
    # Only the unsigned signature padding (bytes past r and s) may change without effect.
    assert offset >= 0x2A0
