"""The relying party's own collateral: a TCB baseline and a measurement revocation list.

A verifier's answer depends on more than the evidence: which TCB levels are current, which
measurements the hospital no longer accepts. These change while a proxy runs (AMD publishes new
firmware, a CVE lands, a build is withdrawn), so they live in one small file the relying party
keeps (``medclave proxy --collateral FILE``); the proxy re-attests every enclave as soon as the
file changes (``client/continuous.py``), without a restart.

``snp_tcb_baseline``: per SEV-SNP product (``Milan``, ``Genoa``, ...), the current TCB level by
component, as AMD's security bulletins state it. Evidence whose ``reported_tcb`` is below it in
any component has TCB status ``OutOfDate``; at or above it in every component, ``UpToDate``
(the rule Intel's TCB info applies to TDX, which the TDX verifier already reads from Intel's
signed collateral, so this baseline applies to SEV-SNP-layout evidence only: SNP and sim).
The appraisal policy then decides (``[tcb] refuse``, by default refusing ``OutOfDate``).

``revoked_measurements``: launch measurements (SNP/sim ``measurement``, TDX ``mr_td``) refused
whatever the policy lists (``policy.measurement_revoked``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.attestation.core import Verification
from medclave.errors import InputError, PolicyError

MAX_COLLATERAL_BYTES = 256 * 1024
_SNP_LAYOUT = ("sev-snp", "sim")
_COMPONENTS = ("bl", "tee", "snp", "ucode")


class SnpTcb(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bl: int = Field(ge=0, le=255)
    tee: int = Field(ge=0, le=255)
    snp: int = Field(ge=0, le=255)
    ucode: int = Field(ge=0, le=255)


class Collateral(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(default=1, ge=1, le=1)
    snp_tcb_baseline: dict[str, SnpTcb] = Field(default_factory=dict, max_length=64)
    revoked_measurements: tuple[str, ...] = Field(default=(), max_length=10_000)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def parse_collateral(data: bytes) -> Collateral:
    if len(data) > MAX_COLLATERAL_BYTES:
        raise InputError("input.too_large", "the collateral file is too large")
    try:
        parsed = Collateral.model_validate_json(data)
    except ValidationError as exc:
        raise InputError("config.invalid", "the collateral file is not valid collateral") from exc
    revoked = tuple(m.lower() for m in parsed.revoked_measurements)
    if any(len(m) not in (64, 96) or set(m) - set("0123456789abcdef") for m in revoked):
        raise InputError("config.invalid", "a revoked measurement is not 32 or 48 bytes of hex")
    return parsed.model_copy(update={"revoked_measurements": revoked})


def load_collateral(path: Path) -> Collateral:
    try:
        with path.open("rb") as fh:
            return parse_collateral(fh.read(MAX_COLLATERAL_BYTES + 1))
    except OSError as exc:
        raise InputError("config.invalid", f"cannot read collateral {path.name}") from exc


def snp_tcb_status(verification: Verification, collateral: Collateral) -> str | None:
    """``UpToDate``/``OutOfDate`` against the baseline, or None when it says nothing."""
    if verification.platform not in _SNP_LAYOUT:
        return None
    claims = verification.claims
    product, parts = claims.get("product"), claims.get("reported_tcb_parts")
    if not isinstance(product, str) or not isinstance(parts, dict):
        return None
    baseline = collateral.snp_tcb_baseline.get(product)
    if baseline is None:
        return None
    current = baseline.model_dump()
    behind = any(int(parts.get(c, -1)) < current[c] for c in _COMPONENTS)
    return "OutOfDate" if behind else "UpToDate"


def apply_collateral(verification: Verification, collateral: Collateral | None) -> Verification:
    """``verification`` with the TCB status the baseline gives; ``policy.measurement_revoked``
    when its measurement is revoked. Without collateral, unchanged."""
    if collateral is None:
        return verification
    claims = verification.claims
    for name in ("measurement", "mr_td"):
        value = claims.get(name)
        if isinstance(value, str) and value.lower() in collateral.revoked_measurements:
            raise PolicyError("policy.measurement_revoked",
                              f"{name} {value[:16]}… is on the relying party's revocation list")
    status = snp_tcb_status(verification, collateral)
    if status is None:
        return verification
    return dataclasses.replace(verification, tcb_status=status)
