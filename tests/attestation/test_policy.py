"""Appraisal policy: refuses to be empty, reports every violation at once, digest in results."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.attestation.binding import report_data_for, verify_binding
from medclave.attestation.core import Check, Verification
from medclave.attestation.ear import issue_ear, verify_ear
from medclave.attestation.policy import (
    appraisal_of,
    appraise,
    default_policy,
    parse_policy,
)
from medclave.errors import AttestationError, MedclaveError, PolicyError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MEASUREMENT = "7a1e5c26" * 12


def snp(**claims: object) -> Verification:
    base = {"measurement": MEASUREMENT, "debug": False, "report_data": "00" * 64,
            "reported_tcb_parts": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
            "policy_bits": {"smt": True, "migrate_ma": False}}
    base.update(claims)
    return Verification(platform="sev-snp", claims=base, checks=(Check("signature", True),))


STRICT = b"""
name = "ward-7"
platforms = ["sev-snp"]
model_digests = ["aa"]
[tcb]
require_known = false
[platform.sev-snp.reference_values]
measurement = ["%s"]
"policy_bits.migrate_ma" = [false]
[platform.sev-snp.minimums]
"reported_tcb_parts.snp" = 8
"reported_tcb_parts.microcode" = 115
""" % MEASUREMENT.encode()


def test_default_policy_accepts_real_evidence_with_unknown_tcb() -> None:
    result = appraise(snp(), default_policy(), now=NOW)
    assert result.accepted and result.policy_digest == default_policy().digest()


def test_default_policy_refuses_sim_debug_and_bad_tcb_all_at_once() -> None:
    sim = Verification(platform="sim", claims={"debug": True}, checks=(), tcb_status="OutOfDate",
                       secure=False)
    with pytest.raises(PolicyError) as info:
        appraise(sim, default_policy(), now=NOW)
    codes = {v["code"] for v in info.value.violations}
    assert codes == {"policy.platform_not_allowed", "policy.debug_forbidden", "policy.tcb_too_low"}
    assert info.value.code == "policy.refused"


@pytest.mark.parametrize("status", ["OutOfDate", "Revoked", "NoMatch", "OutOfDateConfigurationNeeded"])
def test_default_policy_refuses_known_bad_tcb(status: str) -> None:
    v = Verification(platform="tdx", claims={"debug": False}, checks=(), tcb_status=status)
    with pytest.raises(PolicyError) as info:
        appraise(v, default_policy(), now=NOW)
    assert info.value.code == "policy.tcb_too_low"


def test_sim_is_accepted_only_when_named() -> None:
    sim = Verification(platform="sim", claims={"debug": False}, checks=(), secure=False)
    policy = parse_policy(b'platforms = ["sim"]')
    assert appraise(sim, policy, now=NOW).accepted
    assert appraisal_of(sim, policy, now=NOW).status["hardware"] == "contraindicated"


def test_strict_policy_accepts_matching_evidence() -> None:
    assert appraise(snp(), parse_policy(STRICT), now=NOW, model_digest="AA").accepted


def test_strict_policy_reports_every_violation() -> None:
    bad = snp(measurement="00" * 48, reported_tcb_parts={"snp": 7, "microcode": 115},
              policy_bits={"migrate_ma": True})
    result = appraisal_of(bad, parse_policy(STRICT), now=NOW, model_digest="bb")
    claims = sorted(v["claim"] for v in result.violations)
    assert claims == ["measurement", "model_digest", "policy_bits.migrate_ma", "reported_tcb_parts.snp"]
    with pytest.raises(PolicyError):
        appraise(bad, parse_policy(STRICT), now=NOW, model_digest="bb")


def test_single_measurement_violation_has_its_own_code() -> None:
    with pytest.raises(PolicyError) as info:
        appraise(snp(measurement="11" * 48), parse_policy(STRICT), now=NOW, model_digest="aa")
    assert info.value.code == "attestation.measurement_mismatch"


def test_require_known_tcb_refuses_unknown() -> None:
    policy = parse_policy(b'platforms = ["tdx"]\n[tcb]\nrequire_known = true')
    v = Verification(platform="tdx", claims={}, checks=())
    with pytest.raises(PolicyError, match="unknown"):
        appraise(v, policy, now=NOW)


def test_stale_evidence_is_refused() -> None:
    policy = parse_policy(b'platforms = ["sev-snp"]\nmax_evidence_age_seconds = 60')
    with pytest.raises(PolicyError) as info:
        appraise(snp(), policy, now=NOW, evidence_time=NOW - timedelta(minutes=5))
    assert info.value.code == "policy.evidence_stale"


@pytest.mark.parametrize("text", [b"", b"platforms = []", b'{"platforms": []}', b"name = 'x'"])
def test_policy_refuses_to_be_empty(text: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.code == "policy.empty"


@pytest.mark.parametrize("text", [b'platforms = ["sev-snp-x"]', b'platforms = ["tdx"]\nsurprise = 1',
                                  b"\xff\xfe", b"[[[", b'{"platforms": "tdx"}'])
def test_invalid_policies_are_refused_with_a_code(text: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.code in ("policy.invalid", "policy.empty")


def test_json_and_toml_policies_have_the_same_digest() -> None:
    as_json = json.dumps({"platforms": ["tdx"], "allow_debug": False}).encode()
    assert parse_policy(as_json).digest() == parse_policy(b'platforms = ["tdx"]').digest()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=512))
def test_policy_parser_never_crashes(data: bytes) -> None:
    with contextlib.suppress(MedclaveError):
        parse_policy(data)


def test_binding_round_trip_and_refusals() -> None:
    runtime = {"model_digest": "ab" * 32, "engine": "llama.cpp"}
    nonce = bytes(range(32))
    rd = report_data_for(nonce, runtime)
    assert len(rd) == 64
    verify_binding(rd, nonce, dict(reversed(list(runtime.items()))))  # canonical: order-free
    with pytest.raises(AttestationError, match="binding"):
        verify_binding(rd, nonce[:-1] + b"\x00", runtime)
    with pytest.raises(AttestationError):
        verify_binding(rd, nonce, {**runtime, "engine": "vllm"})


def test_ear_round_trip_and_tamper() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    v = snp()
    appraisal = appraise(v, default_policy(), now=NOW)
    token = issue_ear(v, appraisal, key=key, now=NOW, nonce=b"n" * 16)
    claims = verify_ear(token, key=key.public_key(), now=NOW + timedelta(seconds=5))
    sub = claims["submods"]["sev-snp"]
    assert sub["ear.status"] in ("affirming", "warning")
    assert sub["ear.appraisal-policy-id"].endswith(appraisal.policy_digest)
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(AttestationError):
        verify_ear(f"{head}.{body}.{flipped}", key=key.public_key(), now=NOW)
    with pytest.raises(AttestationError):
        verify_ear(token, key=ec.generate_private_key(ec.SECP256R1()).public_key(), now=NOW)
    with pytest.raises(AttestationError):
        verify_ear(token, key=key.public_key(), now=NOW + timedelta(days=2))


def test_ear_marks_refusals_contraindicated() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    v = Verification(platform="sim", claims={}, checks=(), secure=False)
    appraisal = appraisal_of(v, default_policy(), now=NOW)
    claims = verify_ear(issue_ear(v, appraisal, key=key, now=NOW), key=key.public_key(), now=NOW)
    sub = claims["submods"]["sim"]
    assert sub["ear.status"] == "contraindicated"
    assert sub["ear.trustworthiness-vector"]["hardware"] == 97
