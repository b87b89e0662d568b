"""Release policies and the broker's wire models (the release protocol clients depend on).

A release policy is the attestation appraisal policy plus what only the broker can check: the
model digests a key may be released to and the requester identities that may ask. As a document
(TOML or JSON)::

    model_digests = ["b179c952…"]          # empty: any model the appraisal accepts
    requesters = ["st-marys/inference"]     # empty: any requester

    [appraisal]
    platforms = ["sev-snp"]
    [appraisal.platform.sev-snp.reference_values]
    measurement = ["7a1e5c26…"]

The requester identity is ``runtime["requester"]`` of the evidence bundle: it sits inside the
report_data binding, so the attested code vouches for it and nobody on the path can change it.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medclave.attestation import AppraisalPolicy
from medclave.crypto.canonical import canonical_json, canonical_sha256
from medclave.errors import PolicyError
from medclave.protocol.evidence import EvidenceBundle

MAX_POLICY_BYTES = 256 * 1024
MAX_SECRET_BYTES = 64 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ReleasePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    appraisal: AppraisalPolicy
    model_digests: tuple[str, ...] = Field(default=(), max_length=256)
    requesters: tuple[str, ...] = Field(default=(), max_length=256)

    @field_validator("model_digests")
    @classmethod
    def _digests(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(v.lower() for v in value)
        bad = [v for v in out if not _HEX64.fullmatch(v)]
        if bad:
            raise ValueError(f"model digests are SHA-256 hex: {bad[0]!r}")
        return out

    @field_validator("requesters")
    @classmethod
    def _requesters(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v or len(v) > 256 for v in value):
            raise ValueError("a requester identity is 1 to 256 characters")
        return value

    def digest(self) -> str:
        return canonical_sha256(self.model_dump(mode="json")).hex()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def parse_release_policy(data: bytes, *, fmt: str | None = None) -> ReleasePolicy:
    """A release policy from TOML or JSON bytes; ``policy.invalid`` / ``policy.empty`` otherwise."""
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError("policy.invalid", "policy too large")
    try:
        text = data.decode("utf-8")
        raw = (
            json.loads(text)
            if fmt == "json" or (fmt is None and text.lstrip().startswith("{"))
            else tomllib.loads(text)
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PolicyError("policy.invalid", f"not valid TOML or JSON: {exc}") from exc
    return release_policy_from_obj(raw)


def release_policy_from_obj(raw: Any) -> ReleasePolicy:
    if not isinstance(raw, dict):
        raise PolicyError("policy.invalid", "a release policy is an object")
    appraisal = raw.get("appraisal")
    if not isinstance(appraisal, dict) or not appraisal.get("platforms"):
        raise PolicyError(
            "policy.empty", "the appraisal policy names no platform: it accepts nothing"
        )
    try:
        return ReleasePolicy.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise PolicyError("policy.invalid", f"{where}: {err.get('msg', 'invalid')}") from exc


# --- release protocol ----------------------------------------------------------------------

# HPKE (RFC 9180) info of every release: the answer is for this protocol and no other.
RELEASE_INFO = b"medclave-kbs-release-v1"


def release_aad(resource: str, version: int, nonce: bytes) -> bytes:
    """HPKE AAD of a release: the client checks it got the resource and version it asked for,
    in answer to its own challenge."""
    return canonical_json({"nonce": nonce.hex(), "resource": resource, "version": version})


class ChallengeResponse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nonce: str  # hex of 32 bytes
    expires_at: str  # ISO 8601, UTC


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str = Field(max_length=400)
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    evidence: EvidenceBundle
    # Optional: a version the owner keeps (a model sealed under an older key); default current.
    version: int | None = Field(default=None, ge=1)


class ReleaseResponse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sealed: str  # base64 of HPKE enc || ciphertext
    version: int
    key_id: str  # fingerprint of the signing broker key (signing.fingerprint)
    signature: str  # base64 Ed25519 signature over signing.release_statement(...)


class StandingRequest(BaseModel):
    """An enclave asks whether it is still in good standing with ``resource``'s owner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str = Field(max_length=400)
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    evidence: EvidenceBundle


class StandingResponse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str
    standing: Literal["good", "revoked"]
    key_id: str
    signature: str  # base64 Ed25519 over signing.standing_statement(...)


class BrokerKeyOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    key_id: str
    public_key: str  # base64 of the raw Ed25519 public key


# --- owner API -----------------------------------------------------------------------------


class SecretBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # base64; None: the broker draws a fresh random 256-bit key.
    secret: str | None = Field(default=None, max_length=MAX_SECRET_BYTES * 2)
    expected_version: int | None = Field(default=None, ge=1)


class ResourceVersionOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    resource: str
    version: int


class ResourceOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    resource: str
    current: int
    versions: list[int]
    policy_version: int | None = None


class PolicyOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    resource: str
    version: int
    versions: list[int]
    digest: str
    policy: dict[str, Any]
