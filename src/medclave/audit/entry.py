"""The audit entry: what happened, by whom, with which model, and commitments instead of PHI.

An entry is canonical JSON (RFC 8785) of :class:`AuditEntry`; those bytes are the Merkle leaf.
Every free-form field is a constrained token (identifiers, hex digests, codes), so no prompt,
answer, name or note can be written into the log by accident: content enters only as an
HMAC-SHA256 commitment under a key the tenant holds. The hospital, holding the key and the data,
can open a commitment; the operator and an auditor, holding neither, learn nothing (HMAC is a
PRF), and a per-entry salt keeps equal prompts in different entries unlinkable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from medclave.crypto.canonical import canonical_json
from medclave.errors import AuditError, InputError

MAX_ENTRY_BYTES = 16 * 1024
MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 1024

_COMMIT_DOMAIN = b"medclave-audit-commit-v1\x00"
_PSEUDONYM_DOMAIN = b"medclave-audit-pseudonym-v1\x00"

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Token = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")]
Code = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._:/-]{0,127}$")]
_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"

CommitLabel = Literal["prompt", "answer", "document"]
# How a generation ended (OpenAI finish reasons plus the ways an answer stops early). Every answer
# that left the enclave, whole or in part, is recorded with one of these.
Ending = Literal["stop", "length", "tool_calls", "content_filter", "client_gone", "error",
                 "cancelled"]
PseudonymKind = Literal["user", "patient"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Params(_Frozen):
    """Sampling parameters; with the seed they make an inference reproducible on one build."""

    temperature: float = Field(ge=0.0, le=5.0)
    top_p: float = Field(ge=0.0, le=1.0)
    max_tokens: int = Field(ge=1, le=1_000_000)
    seed: int = Field(ge=0, le=(1 << 53) - 1)  # RFC 8785 §3.2.2.3: integers exact in a double


class AttestationSummary(_Frozen):
    """The appraisal the request ran under (EAR status vocabulary)."""

    platform: Code
    status: Literal["affirming", "warning", "contraindicated", "none"]
    secure: bool
    policy_digest: Hex64 | None = None


class Authorization(_Frozen):
    decision: Literal["allow", "deny"]
    reason: Code  # a policy or rule identifier, never free text
    # Every policy id the request's authorization decisions cited (Cedar's reasons), so an
    # auditor can tell which rule let a request through or stopped it.
    policies: tuple[Code, ...] = Field(default=(), max_length=64)


_LATER_FIELDS = ("ended", "completion_tokens", "key_version")


class AuditEntry(_Frozen):
    """Version 1 of the entry. Field names are short because there will be many of them."""

    v: Literal[1] = 1
    time: str = Field(pattern=_TIME)
    request_id: Token
    tenant: Token
    user: Hex64  # pseudonym(key, "user", id)
    patient: Hex64 | None = None  # pseudonym(key, "patient", id)
    action: Code
    model_digest: Hex64
    engine_build: Token
    evidence_digest: Hex64
    attestation: AttestationSummary
    params: Params | None = None  # None for a refused request: it was never parsed
    salt: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    prompt: Hex64 | None = None  # None for a refused request: nothing of it is committed
    answer: Hex64 | None = None  # None when nothing was generated (refused, failed)
    # How generation ended and how many completion tokens left the enclave (None: refused).
    ended: Ending | None = None
    completion_tokens: int | None = Field(default=None, ge=0, le=(1 << 53) - 1)
    # The version of the tenant's commitment key the commitments and pseudonyms are under, so
    # the hospital opens an entry with the right key after a rotation (None: a development key
    # file, which has no versions).
    key_version: int | None = Field(default=None, ge=1, le=(1 << 53) - 1)
    documents: tuple[Hex64, ...] = Field(default=(), max_length=256)
    authorization: Authorization
    break_glass: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> AuditEntry:
        # An allowed inference always states what ran (replay needs both); an answer without
        # the prompt it answers would be a commitment nobody can ever check.
        if self.authorization.decision == "allow" and (self.prompt is None or self.params is None):
            raise ValueError("an allowed request records its prompt commitment and params")
        if self.prompt is None and self.answer is not None:
            raise ValueError("an answer commitment needs a prompt commitment")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_later_fields(self, handler: SerializerFunctionWrapHandler
                                    ) -> dict[str, Any]:
        # Fields added after the first entries were written are left out while unset, so
        # those entries keep their exact canonical bytes (and so their leaf hashes).
        body: dict[str, Any] = handler(self)
        for name in _LATER_FIELDS:
            if body.get(name, 0) is None:
                del body[name]
        return body

    def to_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    def leaf_data(self) -> bytes:
        return self.to_bytes()


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with microseconds, the entry's ``time`` format."""
    if when.tzinfo is None:
        raise AuditError("audit.entry_invalid", "entry time must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_salt() -> str:
    return secrets.token_hex(16)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise AuditError("audit.entry_invalid", f"a tenant key has at least {MIN_KEY_BYTES} bytes")


def parse_commitment_key(data: bytes) -> bytes:
    """A tenant commitment key as stored (a file, a key-broker resource): its bytes without
    surrounding whitespace, so a key kept as text (64 hex digits and a newline) works alike in
    the enclave and in ``medclave audit replay --tenant-key``. ``input.malformed`` otherwise."""
    if not isinstance(data, bytes) or len(data) > MAX_KEY_BYTES:
        raise InputError("input.malformed", f"a tenant key has at most {MAX_KEY_BYTES} bytes")
    key = data.strip()
    if len(key) < MIN_KEY_BYTES:
        raise InputError("input.malformed", f"a tenant key has at least {MIN_KEY_BYTES} bytes")
    return key


def generate_commitment_key() -> bytes:
    """A fresh tenant commitment key as text: 256 random bits in hex, newline-terminated."""
    return secrets.token_hex(32).encode() + b"\n"


def commit(key: bytes, label: CommitLabel, salt: str, data: bytes) -> str:
    """HMAC-SHA256(key, domain || label || 0x00 || salt || data), lower hex."""
    _check_key(key)
    msg = _COMMIT_DOMAIN + label.encode() + b"\x00" + bytes.fromhex(salt) + data
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def open_commitment(key: bytes, label: CommitLabel, salt: str, data: bytes, value: str) -> None:
    """Raise ``audit.commitment_mismatch`` unless ``data`` is what ``value`` commits to."""
    if not hmac.compare_digest(commit(key, label, salt, data), value):
        raise AuditError("audit.commitment_mismatch", f"the {label} does not open the commitment")


def pseudonym(key: bytes, kind: PseudonymKind, identifier: str) -> str:
    """Stable per tenant, so one user's actions link up; meaningless without the tenant key."""
    _check_key(key)
    msg = _PSEUDONYM_DOMAIN + kind.encode() + b"\x00" + identifier.encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def parse_entry(data: bytes) -> AuditEntry:
    """An entry from its stored bytes, which must be exactly its canonical form.

    The byte-for-byte comparison with the re-encoded entry also refuses duplicate keys,
    whitespace, escapes and number spellings that the parser would have tolerated.
    """
    if not isinstance(data, bytes) or len(data) > MAX_ENTRY_BYTES:
        raise AuditError("audit.entry_invalid", f"an entry is bytes of at most {MAX_ENTRY_BYTES}")
    try:
        entry = AuditEntry.model_validate_json(data, strict=True)
    except ValidationError as exc:
        detail = f"not an audit entry: {exc.error_count()} errors"
        raise AuditError("audit.entry_invalid", detail) from exc
    if entry.to_bytes() != data:
        raise AuditError("audit.entry_invalid", "entry bytes are not canonical JSON")
    return entry


def entry_bytes(value: Any) -> bytes:
    """Canonical bytes of a JSON value meant to be an entry (a receipt carries it as an object)."""
    try:
        return canonical_json(value)
    except (InputError, TypeError) as exc:
        raise AuditError("audit.entry_invalid", "the entry is not canonicalizable JSON") from exc
