"""Real SEV-SNP evidence reaches appraisal: its signature verifies against AMD's pinned roots,
and only then is it refused, for not binding this broker's nonce (it was captured elsewhere).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from medclave.attestation.policy import AppraisalPolicy
from medclave.attestation.x509chain import load_certificates
from medclave.kbs.models import ReleasePolicy
from medclave.protocol.evidence import BundleEndorsements, EvidenceBundle
from tests.kbs.conftest import Clock, Live
from tests.kbs.helpers import RESOURCE, challenge, ephemeral_runtime, error_code, post_release, provision

LiveFactory = Callable[..., Live]
SNP = "sev-snp"
# S3 of MANIFEST.md: a real Milan report + its VCEK; the Milan ASK/ARK from AMD.
REPORT = "trustee/test-report.bin"
CHAIN = ("trustee/test-vcek.der", "amd-roots/ask_ark_milan.pem")
WHEN = datetime(2025, 7, 1, 12, tzinfo=UTC)  # inside the VCEK's validity


def snp_bundle(vectors: Path, nonce: bytes, runtime: dict[str, object], *,
               flip: int | None = None) -> EvidenceBundle:
    report = bytearray((vectors / SNP / REPORT).read_bytes())
    if flip is not None:
        report[flip] ^= 0x01
    pems = [c.public_bytes(Encoding.PEM).decode()
            for rel in CHAIN for c in load_certificates((vectors / SNP / rel).read_bytes())]
    return EvidenceBundle(platform=SNP, evidence=base64.b64encode(bytes(report)).decode(),
                          endorsements=BundleEndorsements(certificates=pems), nonce=nonce.hex(),
                          runtime=runtime)


@pytest.fixture
def live(live_factory: LiveFactory, clock: Clock) -> Live:
    clock.now = WHEN
    live = live_factory()
    policy = ReleasePolicy(appraisal=AppraisalPolicy(name="snp", platforms=("sev-snp",)))
    provision(live.url, live.token("vendor"), policy=policy)
    return live


@pytest.mark.vectors
def test_real_snp_report_verifies_then_fails_the_nonce_binding(vectors: Path, live: Live) -> None:
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    r = post_release(live.url, RESOURCE, nonce, snp_bundle(vectors, nonce, runtime))
    assert r.status_code == 403, r.text
    assert error_code(r) == "attestation.binding_mismatch"
    decision = live.decisions[-1]
    assert decision.outcome == "refused" and decision.code == "attestation.binding_mismatch"
    # Every hardware check passed before the binding: the real-hardware path got this far.
    assert "report signature:ok" in decision.checks
    assert "chip id:ok" in decision.checks
    assert decision.checks[-1] == "binding:failed"


@pytest.mark.vectors
@pytest.mark.parametrize("offset", [0x50, 0x90, 0x1A0])
def test_its_twin_with_one_signed_byte_flipped_is_refused_earlier(vectors: Path, live: Live,
                                                                   offset: int) -> None:
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    r = post_release(live.url, RESOURCE, nonce, snp_bundle(vectors, nonce, runtime, flip=offset))
    assert r.status_code == 403 and error_code(r) == "attestation.signature_invalid"
    decision = live.decisions[-1]
    assert decision.code == "attestation.signature_invalid"
    assert "report signature:failed" in decision.checks and "binding:failed" not in decision.checks
