"""The evidence bundle (version 1): what an enclave sends to prove what it runs.

``runtime`` is kept as plain JSON so its canonical form, which report_data binds, survives the
round trip byte for byte; :class:`Runtime` is the typed view used to build and read it. A runtime
without a canonical form (RFC 8785: an integer beyond ±(2^53 − 1), say) cannot be bound, so a
bundle carrying one does not parse: every reader refuses it as malformed input, before any
verification.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medclave.crypto.canonical import canonical_json
from medclave.errors import InputError

MEDIA_TYPE = "application/vnd.medclave.evidence+json"
MAX_BUNDLE_BYTES = 2 * 1024 * 1024


class Runtime(BaseModel):
    """Everything the client is about to trust, bound into the hardware report_data."""

    model_config = ConfigDict(frozen=True, extra="allow")

    ohttp_key_config: str | None = None  # base64 of the RFC 9458 key configuration
    model_digest: str | None = None  # sha256 hex of the plaintext weights
    engine: str | None = None
    engine_build: str | None = None
    audit_public_key: str | None = None  # base64 Ed25519 raw public key
    policy_digest: str | None = None
    ephemeral_key: str | None = None  # base64 X25519 key for key release (KBS)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class BundleEndorsements(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    certificates: list[str] = Field(default_factory=list, max_length=16)  # PEM
    collateral: list[str] = Field(default_factory=list, max_length=32)  # base64


class EvidenceBundle(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    platform: str = Field(max_length=32)
    evidence: str = Field(max_length=MAX_BUNDLE_BYTES)  # base64 of the raw hardware evidence
    endorsements: BundleEndorsements = Field(default_factory=BundleEndorsements)
    nonce: str = Field(pattern=r"^[0-9a-f]{0,128}$")
    runtime: dict[str, Any]
    gpu: list[GpuEvidence] = Field(default_factory=list, max_length=8)

    @field_validator("runtime")
    @classmethod
    def _bindable(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            canonical_json(value)
        except InputError as exc:
            raise ValueError(f"runtime: {exc.detail}") from exc
        return value

    def evidence_bytes(self) -> bytes:
        return base64.b64decode(self.evidence, validate=True)


class GpuEvidence(BaseModel):
    """NVIDIA evidence gathered beside the CPU report; its SPDM nonce is derived from the same binding.

    ``evidence`` is base64 of the SPDM GET_MEASUREMENTS request || MEASUREMENTS response, whose
    requester nonce is ``SHA-256("medclave-gpu-v1" || report_data)`` (attestation.binding);
    ``certificates`` the GPU's device chain (PEM, leaf first); ``collateral`` base64 reference
    integrity manifests (driver, VBIOS), when the enclave has them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    platform: Literal["nvidia"] = "nvidia"
    evidence: str = Field(max_length=MAX_BUNDLE_BYTES)
    certificates: list[str] = Field(default_factory=list, max_length=8)
    collateral: list[str] = Field(default_factory=list, max_length=4)


EvidenceBundle.model_rebuild()
