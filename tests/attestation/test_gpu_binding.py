"""CPU + GPU as one attested unit: the GPU's SPDM nonce is SHA-256("medclave-gpu-v1" || report_data).

The real H100 vector's nonce is fixed (931d8dd0…2364dfcb), so it can never answer a challenge
derived from a report_data made here: it is refused at the GPU nonce check, after its chain to
NVIDIA's root and its signature verified. The positive path signs the same measurements under a
test device chain (tests/attestation/_gpu_helpers.py), which verifies but is never ``secure``.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.attestation import gather, sim, verifier
from medclave.attestation.binding import gpu_nonce_for, report_data_for
from medclave.attestation.core import Verification
from medclave.attestation.policy import appraisal_of, parse_policy
from medclave.attestation.verifier import verify_bundle
from medclave.enclave.attester import hardware_attester, sim_attester
from medclave.errors import AttestationError, MedclaveError
from medclave.protocol.evidence import EvidenceBundle, GpuEvidence
from tests.attestation._ecdsa import P384_N, raw_high_s
from tests.attestation._gpu_helpers import FakeNvml, SignedGpu
from tests.attestation._nvidia_helpers import N1_NONCE, RIM_VALID_AT, Nvidia, load
from tests.conftest import flip

NOW = RIM_VALID_AT
NONCE = bytes(range(32))
RUNTIME = {"model_digest": "ab" * 32, "engine": "llama.cpp", "ephemeral_key": "AAAA"}
REPORT_DATA = report_data_for(NONCE, RUNTIME)
GPU_NONCE = gpu_nonce_for(REPORT_DATA)
POLICY_HEAD = b'platforms = ["sim", "nvidia"]\nrequire_gpu = true\n'


@pytest.fixture(scope="module")
def nv(vectors: Path) -> Nvidia:
    return load(vectors)


@pytest.fixture(scope="module")
def authority() -> sim.SimAuthority:
    return sim.SimAuthority.create(now=NOW)


@pytest.fixture(scope="module")
def gpu(nv: Nvidia) -> SignedGpu:
    return SignedGpu.from_real(nv.report, nv.chain[0])


def _roots(authority: sim.SimAuthority) -> frozenset[str]:
    return frozenset({authority.root_fingerprint})


def _bundle(authority: sim.SimAuthority, gpus: list[GpuEvidence],
            runtime: dict[str, Any] | None = None) -> EvidenceBundle:
    base = sim.make_bundle(authority, nonce=NONCE, runtime=runtime or RUNTIME)
    return EvidenceBundle.model_validate(
        {**base.model_dump(), "gpu": [g.model_dump() for g in gpus]})


def _real_entry(nv: Nvidia, report: bytes | None = None) -> GpuEvidence:
    chain = (nv.root / "nvtrust" / "hopperCertChain.txt").read_text()
    pems = [p + "-----END CERTIFICATE-----\n" for p in chain.split("-----END CERTIFICATE-----")
            if "BEGIN" in p]
    return GpuEvidence(evidence=base64.b64encode(report or nv.report).decode(), certificates=pems)


def _verify(bundle: EvidenceBundle, authority: sim.SimAuthority, **kw: Any) -> Verification:
    return verify_bundle(bundle, now=NOW, expected_nonce=NONCE, sim_roots=_roots(authority), **kw)


def _refused(code: str, bundle: EvidenceBundle, authority: sim.SimAuthority,
             **kw: Any) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        _verify(bundle, authority, **kw)
    assert info.value.code == code, info.value.detail
    return info.value


# --- the binding -------------------------------------------------------------------------------


def test_gpu_nonce_is_sha256_of_label_and_report_data() -> None:
    assert hashlib.sha256(b"medclave-gpu-v1" + REPORT_DATA).digest() == GPU_NONCE
    assert len(GPU_NONCE) == 32
    assert gpu_nonce_for(report_data_for(NONCE, {**RUNTIME, "engine": "vllm"})) != GPU_NONCE
    with pytest.raises(AttestationError) as info:
        gpu_nonce_for(REPORT_DATA[:32])
    assert info.value.code == "attestation.binding_mismatch"


# --- the real H100 vector ----------------------------------------------------------------------


@pytest.mark.vectors
def test_real_h100_evidence_is_refused_at_the_gpu_nonce_binding(
        nv: Nvidia, authority: sim.SimAuthority) -> None:
    error = _refused("attestation.nonce_mismatch", _bundle(authority, [_real_entry(nv)]),
                     authority)
    names = {c.name: c.ok for c in error.checks}
    # The CPU part verified and bound; the GPU reached its nonce check on NVIDIA's real root.
    assert names["binding"] is True
    assert names["gpu[0] 1. device certificate chain"] is True
    assert names["gpu[0] 2. SPDM signature"] is True
    assert error.checks[-1].name == "gpu[0] 3. nonce" and not error.checks[-1].ok
    assert N1_NONCE.hex()[:16] in error.detail and error.detail.startswith("gpu[0]: ")


@pytest.mark.vectors
def test_real_h100_evidence_with_one_flipped_signed_byte_is_refused(
        nv: Nvidia, authority: sim.SimAuthority) -> None:
    report = nv.report
    for offset in (4, len(report) // 2, len(report) - 1):  # request nonce, a measurement, r||s
        error = _refused("attestation.signature_invalid",
                         _bundle(authority, [_real_entry(nv, flip(report, offset))]), authority)
        assert error.checks[-1].name == "gpu[0] 2. SPDM signature"


# --- the positive path, under a test device root -----------------------------------------------


def test_bound_gpu_evidence_verifies_with_the_cpu_and_is_not_secure(
        authority: sim.SimAuthority, gpu: SignedGpu) -> None:
    v = _verify(_bundle(authority, [gpu.entry(GPU_NONCE)]), authority, trusted_roots=gpu.roots)
    assert v.platform == "sim" and v.secure is False
    (claims,) = v.claims["gpu"]
    assert claims["nonce"] == GPU_NONCE.hex() and claims["secure"] is False
    assert claims["driver_version"] == "550.90.07"
    names = [c.name for c in v.checks]
    assert names.index("binding") < names.index("gpu[0] 3. nonce") < names.index("gpu[0] binding")
    assert all(c.ok for c in v.checks)


def test_a_test_rooted_gpu_keeps_a_vendor_rooted_cpu_from_being_secure(
        authority: sim.SimAuthority, gpu: SignedGpu, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the combination is under test: the CPU result is marked secure, the GPU is not."""
    real = verifier.verify_raw

    def cpu_secure(data: bytes, **kw: Any) -> Verification:
        result = real(data, **kw)
        return replace(result, secure=True) if kw.get("platform") == "sim" else result

    monkeypatch.setattr(verifier, "verify_raw", cpu_secure)
    assert _verify(_bundle(authority, []), authority).secure is True
    v = _verify(_bundle(authority, [gpu.entry(GPU_NONCE)]), authority, trusted_roots=gpu.roots)
    assert v.secure is False


def test_the_test_root_is_not_trusted_by_default(authority: sim.SimAuthority,
                                                 gpu: SignedGpu) -> None:
    error = _refused("attestation.root_untrusted", _bundle(authority, [gpu.entry(GPU_NONCE)]),
                     authority)
    assert error.checks[-1].name == "gpu[0] 1. device certificate chain"


def test_bound_gpu_evidence_with_one_flipped_signed_byte_is_refused(
        authority: sim.SimAuthority, gpu: SignedGpu) -> None:
    evidence = gpu.evidence(GPU_NONCE)
    for offset in (5, len(evidence) // 2, len(evidence) - 1):
        entry = GpuEvidence(evidence=base64.b64encode(flip(evidence, offset)).decode(),
                            certificates=gpu.chain_pem())
        _refused("attestation.signature_invalid", _bundle(authority, [entry]), authority,
                 trusted_roots=gpu.roots)


def test_gpu_evidence_bound_to_another_runtime_is_refused(authority: sim.SimAuthority,
                                                          gpu: SignedGpu) -> None:
    """A GPU answer lifted from another bundle (another key, another boot) is a replay."""
    other = gpu_nonce_for(report_data_for(NONCE, {**RUNTIME, "ephemeral_key": "BBBB"}))
    error = _refused("attestation.nonce_mismatch", _bundle(authority, [gpu.entry(other)]),
                     authority, trusted_roots=gpu.roots)
    assert error.checks[-1].name == "gpu[0] 3. nonce"


def test_every_gpu_must_verify(authority: sim.SimAuthority, gpu: SignedGpu) -> None:
    good = gpu.entry(GPU_NONCE)
    bad = gpu.entry(bytes(32))
    error = _refused("attestation.nonce_mismatch", _bundle(authority, [good, bad]), authority,
                     trusted_roots=gpu.roots)
    assert error.detail.startswith("gpu[1]: ")
    assert {c.name for c in error.checks} >= {"gpu[0] binding", "gpu[1] 3. nonce"}


def test_malformed_gpu_entries_are_refused(authority: sim.SimAuthority, gpu: SignedGpu) -> None:
    entry = gpu.entry(GPU_NONCE)
    kw = {"trusted_roots": gpu.roots}
    no_chain = GpuEvidence(evidence=entry.evidence)
    _refused("attestation.certificate_missing", _bundle(authority, [no_chain]), authority, **kw)
    not_b64 = GpuEvidence(evidence="!!", certificates=entry.certificates)
    _refused("attestation.malformed", _bundle(authority, [not_b64]), authority, **kw)
    not_spdm = GpuEvidence(evidence=base64.b64encode(b"\x11\x60" * 40).decode(),
                           certificates=entry.certificates)
    _refused("attestation.malformed", _bundle(authority, [not_spdm]), authority, **kw)
    error = _refused("attestation.malformed", _bundle(authority, [entry, entry]), authority, **kw)
    assert "twice" in error.detail


def test_one_gpu_answer_in_a_second_byte_form_is_still_one_gpu(authority: sim.SimAuthority,
                                                               gpu: SignedGpu) -> None:
    """The same GPU answer re-encoded, by ECDSA's (r, n - s) and an unsigned trailing byte,
    verifies on its own; beside the original it used to count as a second attested GPU (the
    duplicate check compared raw-byte hashes). Evidence is now compared by its signed bytes."""
    entry = gpu.entry(GPU_NONCE)
    raw = base64.b64decode(entry.evidence)
    twin_raw = raw[:-96] + raw_high_s(raw[-96:], P384_N) + b"\x00"
    twin = GpuEvidence(evidence=base64.b64encode(twin_raw).decode(),
                       certificates=entry.certificates)
    alone = _verify(_bundle(authority, [twin]), authority, trusted_roots=gpu.roots)
    (claims,) = alone.claims["gpu"]
    assert claims["evidence_digest"] == hashlib.sha256(raw[:-96]).hexdigest()
    assert claims["evidence_sha256"] == hashlib.sha256(twin_raw).hexdigest()
    error = _refused("attestation.malformed", _bundle(authority, [entry, twin]), authority,
                     trusted_roots=gpu.roots)
    assert "twice" in error.detail


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_mutated_gpu_evidence_never_verifies(authority: sim.SimAuthority, gpu: SignedGpu,
                                             data: st.DataObject) -> None:
    evidence = gpu.signed[0] if gpu.signed else gpu.evidence(GPU_NONCE)
    offset = data.draw(st.integers(0, len(evidence) - 1))
    mask = data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(1, len(evidence)))
    mutated = flip(evidence, offset, mask)[:cut] if data.draw(st.booleans()) else \
        flip(evidence, offset, mask)
    entry = GpuEvidence(evidence=base64.b64encode(mutated).decode(),
                        certificates=gpu.chain_pem())
    try:
        _verify(_bundle(authority, [entry]), authority, trusted_roots=gpu.roots)
    except MedclaveError:
        return
    pytest.fail("mutated GPU evidence verified")


# --- appraisal ----------------------------------------------------------------------------------


def _with_gpu(authority: sim.SimAuthority, gpu: SignedGpu) -> Verification:
    return _verify(_bundle(authority, [gpu.entry(GPU_NONCE)]), authority, trusted_roots=gpu.roots)


def _violations(v: Verification, policy: bytes) -> dict[str, str]:
    return {x["claim"]: x["code"] for x in appraisal_of(v, parse_policy(policy), now=NOW).violations}


def test_require_gpu_refuses_a_bundle_without_gpu_evidence(authority: sim.SimAuthority) -> None:
    v = _verify(_bundle(authority, []), authority)
    assert _violations(v, POLICY_HEAD) == {"gpu": "policy.refused"}
    assert _violations(v, b'platforms = ["sim"]') == {}


def test_require_gpu_is_met_by_a_verified_gpu_entry_but_a_test_root_is_refused(
        authority: sim.SimAuthority, gpu: SignedGpu) -> None:
    found = _violations(_with_gpu(authority, gpu), POLICY_HEAD)
    assert "gpu" not in found
    assert found == {"gpu[0]": "policy.platform_not_allowed"}


def _genuine(v: Verification) -> Verification:
    """The verified GPU claims as if NVIDIA's root had signed them: appraisal alone is tested."""
    gpus = [{**g, "secure": True} for g in v.claims["gpu"]]
    return replace(v, claims={**v.claims, "gpu": gpus}, secure=True)


def test_nvidia_rules_apply_to_each_gpu_entry(authority: sim.SimAuthority,
                                              gpu: SignedGpu) -> None:
    v = _genuine(_with_gpu(authority, gpu))
    assert _violations(v, POLICY_HEAD) == {}
    rules = b'[platform.nvidia.rules]\nmin_driver_version = "560.0.0"\n'
    assert _violations(v, POLICY_HEAD + rules) == {
        "gpu[0].driver_version": "policy.tcb_too_low",
        "gpu[0].rim_kinds": "policy.refused",  # require_rim: no verified manifests
    }
    accepts = b'[platform.nvidia.rules]\nallowed_driver_versions = ["550.90.07"]\n' \
              b'require_rim = false\n'
    assert _violations(v, POLICY_HEAD + accepts) == {}
    refs = b'[platform.nvidia.reference_values]\nvbios_version = ["96.00.9f.00.02"]\n'
    result = appraisal_of(v, parse_policy(POLICY_HEAD + refs), now=NOW)
    assert [(x["claim"], x["code"]) for x in result.violations] == [
        ("gpu[0].vbios_version", "attestation.measurement_mismatch")]
    assert result.status["executables"] == "contraindicated"


# --- the enclave attester -----------------------------------------------------------------------


def test_hardware_attester_binds_every_gpu_to_its_cpu_report(
        authority: sim.SimAuthority, gpu: SignedGpu, nv: Nvidia) -> None:
    second = SignedGpu.from_real(nv.report, nv.chain[0])
    nvml = FakeNvml([gpu, second])
    cpu_calls: list[bytes] = []

    def cpu(report_data: bytes) -> gather.Gathered:  # a recorded CPU report: sim layout
        cpu_calls.append(report_data)
        return gather.Gathered(platform="sim", evidence=sim.make_report(authority, report_data))

    bundle = hardware_attester(cpu=cpu, nvml=nvml)(NONCE, dict(RUNTIME))
    assert cpu_calls == [REPORT_DATA]
    assert nvml.nonces == [GPU_NONCE, GPU_NONCE]
    assert nvml.calls == ["init", "shutdown"]
    assert [len(g.certificates) for g in bundle.gpu] == [5, 5]
    v = verify_bundle(bundle, now=NOW, expected_nonce=NONCE, sim_roots=_roots(authority),
                      certificates=[c.encode() for c in authority.chain_pem()],
                      trusted_roots=gpu.roots | second.roots)
    assert [g["nonce"] for g in v.claims["gpu"]] == [GPU_NONCE.hex()] * 2
    assert "gpu" not in _violations(v, POLICY_HEAD)


def test_hardware_attester_without_nvml_or_gpus_attests_the_cpu_alone(
        authority: sim.SimAuthority) -> None:
    def cpu(report_data: bytes) -> gather.Gathered:
        return gather.Gathered(platform="sim", evidence=sim.make_report(authority, report_data))

    assert hardware_attester(cpu=cpu, nvml=FakeNvml([]))(NONCE, dict(RUNTIME)).gpu == []

    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    assert gather.gpu_attestations(GPU_NONCE, nvml=NoDriver([])) is None


def test_sim_attester_never_carries_gpu_evidence(authority: sim.SimAuthority) -> None:
    assert sim_attester(authority)(NONCE, dict(RUNTIME)).gpu == []


def test_gpu_gathering_refuses_what_a_bundle_cannot_hold(gpu: SignedGpu) -> None:
    with pytest.raises(AttestationError):
        gather.gpu_attestations(b"short", nvml=FakeNvml([gpu]))
    with pytest.raises(AttestationError, match="at most 8"):
        gather.gpu_attestations(GPU_NONCE, nvml=FakeNvml([gpu] * 9))

    class Overlong(FakeNvml):
        def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
            cert = super().nvmlDeviceGetConfComputeGpuCertificate(handle)
            cert.attestationCertChainSize = len(cert.attestationCertChain) + 1
            return cert

    nvml = Overlong([gpu])
    with pytest.raises(AttestationError, match="out of range"):
        gather.gpu_attestations(GPU_NONCE, nvml=nvml)
    assert nvml.calls == ["init", "shutdown"]
