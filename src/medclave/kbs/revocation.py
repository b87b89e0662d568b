"""Revocation lists: enclaves an owner no longer releases to, whatever its policies say.

An owner keeps one list (owner API ``/kbs/v1/owner/revocations``, ``medclave kbs revoke``);
it applies to every release of that owner's resources and to every standing check an enclave
makes about them (``KeyBroker.standing``). An entry names one identity of verified evidence:

| kind | matched against (claims of the verified evidence) |
|---|---|
| ``measurement`` | SEV-SNP and sim ``measurement``, TDX ``mr_td`` |
| ``chip_id`` | SEV-SNP ``chip_id`` (the CPU's unique id) |
| ``tcb`` | SEV-SNP ``reported_tcb``, TDX ``tee_tcb_svn`` (exact value: one TCB level) |
| ``gpu_serial`` | the serial number of an NVIDIA GPU's device certificate (leaf), in hex |

Values are lower-case hex. Only identities taken from evidence that verified are compared, so
an enclave cannot dodge an entry by what its runtime claims; a refusal is ``kbs.revoked``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medclave.attestation.core import Verification
from medclave.protocol.evidence import EvidenceBundle

Kind = Literal["measurement", "chip_id", "tcb", "gpu_serial"]
KINDS: tuple[Kind, ...] = ("measurement", "chip_id", "tcb", "gpu_serial")
MAX_REVOCATIONS_PER_OWNER = 10_000

# claim names per kind, across platforms (module docstring)
_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "measurement": ("measurement", "mr_td"),
    "chip_id": ("chip_id",),
    "tcb": ("reported_tcb", "tee_tcb_svn"),
}


def normalize(kind: str, value: str) -> str:
    """Lower-case hex; a serial number without leading zeros (certificates differ in padding)."""
    text = value.strip().lower()
    if kind == "gpu_serial":
        text = format(int(text, 16), "x")
    return text


class RevocationIn(BaseModel):
    """An owner's request to revoke one identity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    value: str = Field(pattern=r"^[0-9a-fA-F]{1,256}$")
    reason: str = Field(default="", max_length=500)

    @field_validator("value")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    def normalized(self) -> str:
        return normalize(self.kind, self.value)


@dataclass(frozen=True)
class Revocation:
    owner: str
    kind: str
    value: str
    reason: str
    created: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "reason": self.reason,
                "created": self.created.isoformat()}


def identities(verification: Verification, bundle: EvidenceBundle) -> dict[str, set[str]]:
    """Every revocable identity of verified evidence, by kind."""
    claims = verification.claims
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for kind, names in _CLAIMS.items():
        for name in names:
            value = claims.get(name)
            if isinstance(value, str) and value:
                found[kind].add(normalize(kind, value))
    chains = [g.certificates for g in bundle.gpu]
    if bundle.platform == "nvidia":
        chains.append(bundle.endorsements.certificates)
    for chain in chains:
        if chain:
            # The chain verified (verify_bundle ran first); its leaf is the device's own.
            leaf = x509.load_pem_x509_certificate(chain[0].encode())
            found["gpu_serial"].add(format(leaf.serial_number, "x"))
    return found


def first_match(revocations: Iterable[Revocation], found: Mapping[str, set[str]]
                ) -> Revocation | None:
    for entry in revocations:
        if entry.value in found.get(entry.kind, ()):
            return entry
    return None
