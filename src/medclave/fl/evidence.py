"""What a federation's evidence binds, and how one party appraises another's.

Every piece of federation evidence is an ordinary evidence bundle (docs/architecture.md,
"Evidence bundle"): report_data = SHA-512("medclave-attest-v1" || nonce || SHA-256(runtime)).
The runtime says what the evidence vouches for, by ``purpose``:

- ``medclave-fl-admission-v1``: a site's SuperNode asks to join. ``node_key`` is the SHA-256 of
  the DER SubjectPublicKeyInfo of the node's Flower authentication key; the nonce is one the
  federation issued for this admission, usable once.
- ``medclave-fl-update-v1``: a site's reply in a round. ``node_key`` again, ``round``, the
  aggregator's nonce for this message, ``update`` (the digest of what the reply carries:
  :func:`content_digest`) and ``site_nonce``, the site's fresh challenge to the aggregator.
- ``medclave-fl-aggregator-v1``: the aggregator's message to a site. ``round`` and
  ``site_nonce``, the last challenge that site sent (empty before its first reply): a site
  touches its data only once the aggregator has answered its own challenge.

:class:`Appraiser` verifies the hardware evidence (sim only when the policy names it), checks
that the runtime says exactly what the caller expects (another node key:
``fl.node_key_mismatch``; another round, update or nonce: ``fl.update_unbound``) and appraises
the claims against the policy (measurement, TCB, debug).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.attestation.core import Verification
from medclave.attestation.policy import AppraisalPolicy, appraise
from medclave.attestation.verifier import verify_bundle
from medclave.crypto.canonical import canonical_sha256
from medclave.errors import AttestationError, FederationError, PolicyError
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.clock import Clock

PURPOSE_ADMISSION = "medclave-fl-admission-v1"
PURPOSE_UPDATE = "medclave-fl-update-v1"
PURPOSE_AGGREGATOR = "medclave-fl-aggregator-v1"
MAX_EVIDENCE_BYTES = 256 * 1024



def utc_now() -> datetime:
    return datetime.now(UTC)


def node_key_fingerprint(public_key: bytes) -> str:
    """SHA-256 (hex) of the DER SubjectPublicKeyInfo of a node key given as OpenSSH or PEM;
    only NIST EC keys, as Flower's SuperNode authentication takes."""
    try:
        if public_key.lstrip().startswith(b"-----"):
            key = serialization.load_pem_public_key(public_key)
        else:
            key = serialization.load_ssh_public_key(public_key)
    except (ValueError, TypeError) as exc:
        raise FederationError("fl.node_key_mismatch", "the node key does not parse") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FederationError("fl.node_key_mismatch", "a node key is an EC key (P-384)")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def content_digest(records: Mapping[str, Any], *, skip: str) -> str:
    """SHA-256 over the canonical JSON of ``{record name: Flower object_id}`` of a message's
    records, ``skip`` (the attestation record itself) left out. Flower's object_id is the
    SHA-256 of the record's serialised bytes, so the digest names exactly what travels."""
    ids = {name: str(rec.object_id) for name, rec in records.items() if name != skip}
    return canonical_sha256(ids).hex()


def parse_evidence(data: bytes) -> EvidenceBundle:
    if not isinstance(data, bytes) or len(data) > MAX_EVIDENCE_BYTES:
        raise AttestationError("attestation.malformed", "evidence missing or too large")
    try:
        return EvidenceBundle.model_validate_json(data)
    except ValueError as exc:
        raise AttestationError("attestation.malformed", "not an evidence bundle") from exc


@dataclass(frozen=True)
class Appraiser:
    """One relying party's view: its policy, the sim roots it pins (used only when the policy
    names sim) and its clock."""

    policy: AppraisalPolicy
    sim_roots: frozenset[str] = frozenset()
    clock: Clock = field(default=utc_now)

    def check(self, bundle: EvidenceBundle, *, nonce: bytes,
              expect: Mapping[str, Any]) -> Verification:
        """Verify ``bundle`` for ``nonce``, require every ``expect`` item in its runtime, appraise.
        Raises the refusal (``AttestationError``, ``PolicyError`` or ``FederationError``)."""
        if bundle.platform == "sim" and not self.policy.allows_sim:
            raise PolicyError("policy.platform_not_allowed",
                              "sim evidence, and the federation's policy does not name sim")
        roots = self.sim_roots if self.policy.allows_sim else frozenset()
        now = self.clock()
        verification = verify_bundle(bundle, now=now, expected_nonce=nonce, sim_roots=roots)
        runtime = bundle.runtime
        for key, want in expect.items():
            got = runtime.get(key)
            if isinstance(want, str) and isinstance(got, str):
                same = hmac.compare_digest(want.encode(), got.encode())
            else:
                same = got == want and type(got) is type(want)
            if not same:
                code = "fl.node_key_mismatch" if key == "node_key" else "fl.update_unbound"
                raise FederationError(code, f"the evidence's runtime states another {key}")
        appraise(verification, self.policy, now=now, evidence_time=now)
        return verification
