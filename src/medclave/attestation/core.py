"""Types every platform verifier shares: options in, a typed verification out.

A platform module exposes the same entry points (see ``registry.Platform``):
``detect(data) -> bool`` (content sniffing), ``parse(data) -> Claims`` (bytes to claims, no
cryptography) and ``verify(data, options) -> Verification`` (signatures, chains, collateral),
which raises :class:`medclave.errors.AttestationError` on the first failed check and never
returns a bool to ignore. Policy appraisal is a separate step (``policy.appraise``).

Time is always injected through :class:`VerifyOptions`; no verifier reads the clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cryptography import x509

from medclave.errors import AttestationError

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

# Worst last: a status at or past OutOfDate is refused by the default policy.
TCB_STATUS_ORDER: tuple[str, ...] = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
    "NoMatch",
)

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
    RIM SWID tags); each platform picks out what it understands.
    """

    certificates: tuple[x509.Certificate, ...] = ()
    collateral: tuple[bytes, ...] = ()


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
    online: Any = None  # an explicit endorsement provider; never set in tests


@dataclass(frozen=True, kw_only=True)
class Verification:
    """Evidence whose every cryptographic check passed. ``secure`` is False only for sim."""

    platform: str
    claims: Claims
    checks: tuple[Check, ...]
    tcb_status: str = "unknown"
    secure: bool = True
    evidence_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "verified": True,
            "secure": self.secure,
            "checks": [c.to_dict() for c in self.checks],
            "claims": dict(self.claims),
            "tcb_status": self.tcb_status,
            "evidence_sha256": self.evidence_sha256,
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
