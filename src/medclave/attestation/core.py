"""Types every platform verifier shares: options in, a typed verification out.

A platform module exposes the same entry points (see ``registry.PlatformVerifier``):
``detect(data) -> str | None`` (content sniffing: the platform name it recognises, or None),
``parse(data) -> Claims`` (bytes to claims, no cryptography) and ``verify(data, options) ->
Verification`` (signatures, chains, collateral), which raises
:class:`medclave.errors.AttestationError` on the first failed check and never returns a bool to
ignore. Policy appraisal is a separate step (``policy.appraise``). A fourth,
``signed_bytes(data) -> bytes``, returns what the evidence's signature covers (no cryptography).

Identifying evidence. Hardware signatures here are ECDSA (SEV-SNP and NVIDIA P-384, TDX P-256),
and ECDSA is malleable: for a valid signature (r, s), (r, n - s) verifies too (SEC 1 §4.1.4
accepts any s in [1, n-1]; none of these vendors' specifications asks for a low s). So anyone can
turn one genuine report into a second byte string that verifies, and a hash of the evidence bytes
(``evidence_sha256``) does not identify a report; neither do unsigned bytes a format allows
(an SNP certificate table, bytes after a TDX or NVIDIA signature). What identifies evidence is
``evidence_digest``: the SHA-256 of exactly the bytes the hardware signed, the same for every
byte form of one report. Each platform defines those bytes:

- SEV-SNP and sim: ATTESTATION_REPORT bytes [0, 0x2A0) (AMD spec 56860, ATTESTATION_REPORT);
- TDX: the quote header and TD report body, as the attestation key signed them (Intel's DCAP
  quote format, A.3 and A.3.8);
- NVIDIA: the GET_MEASUREMENTS request and the MEASUREMENTS response up to its signature
  (DSP0274 1.1 §10.11.2);
- plain TPM: the TPMS_ATTEST the AK signed (TPM 2.0 Part 2, TPMS_ATTEST; Part 3 §18.4);
- Azure vTPM: the TPMS_ATTEST (4-byte big-endian length first) followed by the signed bytes of
  the hardware report inside the HCL report (the two signed parts, each from its own key).

Wherever evidence is named (the key broker's decision log, the enclave's audit entries, the GPUs
of a bundle) it is named by ``evidence_digest``; ``evidence_sha256`` remains the hash of the
bytes as received, for forensics only.

Time is always injected through :class:`VerifyOptions`; no verifier reads the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from cryptography import x509

from medclave.crypto.jose import JoseErrors
from medclave.errors import AttestationError

# How the attestation layer refuses what crypto.jose reads (EAR tokens, JSON inside evidence):
# malformed is malformed; another alg, another key or a bad signature is a signature refusal.
ATTESTATION_JOSE_ERRORS = JoseErrors(
    AttestationError,
    malformed="attestation.malformed",
    algorithm="attestation.signature_invalid",
    signature="attestation.signature_invalid",
    key="attestation.signature_invalid",
)

TcbStatus = Literal[
    "unknown",
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "NoMatch",
]

# The statuses as TcbStatus lists them, "unknown" left out. Worst last: a status at or past
# OutOfDate is refused by the default policy.
TCB_STATUS_ORDER: tuple[str, ...] = get_args(TcbStatus)[1:]

Claims = Mapping[str, Any]

# Upper bound on any evidence blob we accept, before parsing starts.
MAX_EVIDENCE_BYTES = 1 << 20


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome, as shown by ``medclave attest verify``."""

    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True, kw_only=True)
class Endorsements:
    """What the caller supplies besides the evidence: certificates and raw collateral files.

    ``collateral`` holds raw bytes (PCS JSON responses, CRLs in DER or PEM, the dcap-qvl bundle,
    RIM SWID tags); each platform picks out what it understands. ``keys`` holds trust anchors
    that are not certificates (a JWKS, a PEM public key, a Confidential Containers
    ``tastore.json``): the relying party's own configuration, never evidence-supplied (an
    evidence bundle's endorsements cannot add to it), since whoever supplies such a key is
    trusted with it outright.
    """

    certificates: tuple[x509.Certificate, ...] = ()
    collateral: tuple[bytes, ...] = ()
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, kw_only=True)
class VerifyOptions:
    """Everything a verifier may depend on besides the evidence itself.

    ``trusted_roots`` overrides the platform's pinned root fingerprints (SHA-256 of the DER, lower
    hex); only the sim platform and tests use it. ``expected_nonce`` is checked where the platform
    carries a nonce of its own (NVIDIA SPDM, TPM extraData); report_data binding is the caller's.
    """

    now: datetime
    endorsements: Endorsements = field(default_factory=Endorsements)
    trusted_roots: frozenset[str] | None = None
    # Fingerprints of local sim roots this relying party accepts; empty: sim never verifies.
    sim_roots: frozenset[str] = frozenset()
    expected_nonce: bytes | None = None
    # An explicit endorsement provider (attestation.providers: SnpEndorsementSource, OcspSource
    # or both); None keeps verification offline.
    online: Any = None


@dataclass(frozen=True, kw_only=True)
class Verification:
    """Evidence whose every cryptographic check passed. ``secure`` is False only for sim.

    ``evidence_digest`` identifies the evidence (SHA-256 of its signed bytes, see the module
    docstring); ``evidence_sha256`` is the hash of the bytes as received, which ECDSA malleability
    and unsigned padding let anyone vary.
    """

    platform: str
    claims: Claims
    checks: tuple[Check, ...]
    tcb_status: str = "unknown"
    secure: bool = True
    evidence_sha256: str = ""
    evidence_digest: str = ""
    # Why evidence that verified is still no protection (a public test key signed it).
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "verified": True,
            "secure": self.secure,
            "warnings": list(self.warnings),
            "checks": [c.to_dict() for c in self.checks],
            "claims": dict(self.claims),
            "tcb_status": self.tcb_status,
            "evidence_sha256": self.evidence_sha256,
            "evidence_digest": self.evidence_digest,
        }


@dataclass(frozen=True)
class Violation:
    """One broken policy rule. Appraisal reports every violation at once, not the first."""

    code: str  # a ``policy.*`` code from medclave.errors.CATALOGUE
    claim: str  # the claim or rule it concerns, e.g. "measurement", "reported_tcb.snp"
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "claim": self.claim, "detail": self.detail}


class CheckLog:
    """Collects checks in order; ``fail`` records the failed step and raises with all of them."""

    def __init__(self) -> None:
        self._checks: list[Check] = []

    def ok(self, name: str, detail: str = "") -> None:
        self._checks.append(Check(name, True, detail))

    def fail(self, name: str, code: str, detail: str) -> AttestationError:
        """Record the failure and return the error for the caller to ``raise``."""
        self._checks.append(Check(name, False, detail))
        return AttestationError(code, detail, checks=tuple(self._checks))

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(self._checks)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def require_size(data: bytes, *, maximum: int = MAX_EVIDENCE_BYTES) -> None:
    if len(data) > maximum:
        raise AttestationError("attestation.malformed", f"evidence is {len(data)} bytes, over {maximum}")
