"""The enclave names its boot evidence in audit entries as the key broker names it in its
decision log: by the SHA-256 of the report's signed bytes (issue 9, part 6)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from medclave.attestation import sim
from medclave.enclave.boot import _Recording
from medclave.protocol.evidence import EvidenceBundle
from tests.attestation._ecdsa import snp_high_s

AUTHORITY = sim.SimAuthority.create(now=datetime(2026, 1, 1, tzinfo=UTC))
NONCE, RUNTIME = bytes(range(32)), {"model_digest": "ab" * 32}


def _attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
    return sim.make_bundle(AUTHORITY, nonce=nonce, runtime=runtime, measurement=bytes(48))


def test_recorded_digest_is_over_the_signed_bytes() -> None:
    recording = _Recording(_attest)
    raw = recording(NONCE, RUNTIME).evidence_bytes()
    assert recording.evidence_digest == hashlib.sha256(raw[:0x2A0]).hexdigest()
    assert recording.evidence_digest != hashlib.sha256(raw).hexdigest()


def test_a_malleated_twin_is_recorded_as_the_same_evidence() -> None:
    original = _Recording(_attest)
    bundle = original(NONCE, RUNTIME)

    def twin(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        raw = snp_high_s(bundle.evidence_bytes())
        return bundle.model_copy(update={"evidence": base64.b64encode(raw).decode()})

    malleated = _Recording(twin)
    malleated(NONCE, RUNTIME)
    assert malleated.evidence_digest == original.evidence_digest
