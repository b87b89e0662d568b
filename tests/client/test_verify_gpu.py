"""The client verifies the GPUs in an enclave's bundle with its CPU report, and its policy appraises
them: GPU evidence bound elsewhere is refused, a GPU under a test root is no GPU, and a policy
that requires a GPU refuses a bundle without one."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from medclave.attestation import sim, verifier
from medclave.attestation.binding import gpu_nonce_for, report_data_for
from medclave.attestation.core import Verification
from medclave.client import verify as client_verify
from medclave.client.verify import verify_enclave
from medclave.crypto.ohttp import OhttpKeyPair
from medclave.errors import AttestationError, PolicyError
from medclave.protocol.evidence import EvidenceBundle
from tests.attestation._gpu_helpers import SignedGpu
from tests.attestation._nvidia_helpers import load
from tests.e2e.helpers import MEASUREMENT, now, sim_policy

DIGEST = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> sim.SimAuthority:
    return sim.SimAuthority.load_or_create(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def gpu(vectors: Path) -> SignedGpu:
    nv = load(vectors)
    return SignedGpu.from_real(nv.report, nv.chain[0])


def _runtime() -> dict[str, Any]:
    key = OhttpKeyPair.generate(3)
    return {"service": "medclave-inference/1",
            "ohttp_key_config": base64.b64encode(key.config.encode()).decode(),
            "model_digest": DIGEST, "model_id": "smollm2-135m-instruct", "engine": "llama.cpp",
            "engine_build": "llama-cpp-python/0.3.36@sysinfo-x",
            "audit_public_key": base64.b64encode(b"\x01" * 32).decode(),
            "audit_origin": "medclave-enclave/test"}


def _bundle(authority: sim.SimAuthority, nonce: bytes, runtime: dict[str, Any],
            gpu: SignedGpu | None, gpu_nonce: bytes | None = None) -> bytes:
    base = sim.make_bundle(authority, nonce=nonce, runtime=runtime,
                           measurement=bytes.fromhex(MEASUREMENT))
    entries = []
    if gpu is not None:
        bound = gpu_nonce or gpu_nonce_for(report_data_for(nonce, runtime))
        entries = [gpu.entry(bound).model_dump()]
    return EvidenceBundle.model_validate({**base.model_dump(), "gpu": entries}
                                         ).model_dump_json().encode()


def _verify(data: bytes, nonce: bytes, authority: sim.SimAuthority, gpu: SignedGpu,
            **policy: Any) -> client_verify.VerifiedEnclave:
    base = sim_policy(platforms=("sim", "nvidia"))
    return verify_enclave(data, nonce=nonce, policy=base.model_copy(update=policy), now=now(),
                          sim_roots=frozenset({authority.root_fingerprint}),
                          trusted_roots=gpu.roots)


def test_gpu_evidence_bound_to_another_runtime_is_refused(authority: sim.SimAuthority,
                                                          gpu: SignedGpu) -> None:
    nonce, runtime = os.urandom(32), _runtime()
    elsewhere = gpu_nonce_for(report_data_for(nonce, _runtime()))  # another OHTTP key
    with pytest.raises(AttestationError) as info:
        _verify(_bundle(authority, nonce, runtime, gpu, elsewhere), nonce, authority, gpu)
    assert info.value.code == "attestation.nonce_mismatch"


def test_a_gpu_under_a_test_root_is_refused_even_beside_sim(authority: sim.SimAuthority,
                                                            gpu: SignedGpu) -> None:
    nonce = os.urandom(32)
    with pytest.raises(PolicyError) as info:
        _verify(_bundle(authority, nonce, _runtime(), gpu), nonce, authority, gpu)
    assert [v["claim"] for v in info.value.violations] == ["gpu[0]"]


def test_require_gpu_refuses_an_enclave_without_one(authority: sim.SimAuthority,
                                                    gpu: SignedGpu) -> None:
    nonce = os.urandom(32)
    data = _bundle(authority, nonce, _runtime(), None)
    assert _verify(data, nonce, authority, gpu).gpus == ()
    with pytest.raises(PolicyError) as info:
        _verify(data, nonce, authority, gpu, require_gpu=True)
    assert [v["claim"] for v in info.value.violations] == ["gpu"]


def test_verified_gpus_are_summarised(authority: sim.SimAuthority, gpu: SignedGpu,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU is marked genuine after verification, so only the client's summary is tested."""
    real = verifier.verify_bundle

    def genuine_gpu(*args: Any, **kw: Any) -> Verification:
        v = real(*args, **kw)
        return replace(v, claims={**v.claims, "gpu": [{**g, "secure": True}
                                                      for g in v.claims["gpu"]]})

    monkeypatch.setattr(client_verify, "verify_bundle", genuine_gpu)
    nonce = os.urandom(32)
    enclave = _verify(_bundle(authority, nonce, _runtime(), gpu), nonce, authority, gpu,
                      require_gpu=True)
    (summary,) = enclave.summary()["gpus"]
    assert summary["driver_version"] == "550.90.07" and summary["secure"] is True
