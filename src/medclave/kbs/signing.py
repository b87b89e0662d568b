"""The broker's identity: every release answer is signed, and enclaves pin who may sign.

Why a signature and not HPKE's authenticated mode. The release secret is HPKE base-mode sealed
to the enclave's ephemeral key, which is public (it is in the evidence), over an AAD anyone on
the path can compute: so anyone could seal a key of their choice and the enclave would take it.
The answer must be authenticated by the broker. We sign the whole answer with Ed25519 (RFC 8032)
rather than use HPKE Auth mode (RFC 9180 §5.1.3) because the signature covers what the
ciphertext does not carry (the digest of the evidence the broker judged, the version it chose),
can be kept and checked by a third party later (Auth mode is deniable by design), needs no
X25519 static key beside the Ed25519 one, and does not depend on TLS: the answer is
authenticated whatever the transport and whoever relays it.

The signed statement (version 1) is RFC 8785 canonical JSON::

    {"type": "medclave-kbs-release/v1", "resource": NAME, "version": N, "nonce": HEX,
     "ephemeral_key": BASE64, "evidence": SHA256-HEX of the bundle, "sealed": SHA256-HEX}

``evidence`` is SHA-256 of the canonical JSON of the evidence bundle as the enclave sent it
(:func:`bundle_digest`): the enclave knows what it sent, so an answer to evidence someone
changed on the way (a malleated signature, another runtime) does not match. A broker key is
named by its fingerprint, SHA-256 of the raw 32-byte public key, hex; the enclave's runtime
names the fingerprints it trusts (``kbs_keys``), so its attestation says which brokers can hand
it keys and a relying party's policy can require its own broker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medclave.crypto.canonical import canonical_json, canonical_sha256
from medclave.errors import InputError, KbsError
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.files import create_secret_file, read_secret_text

STATEMENT_TYPE = "medclave-kbs-release/v1"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_TRUSTED_KEYS = 16


def fingerprint(public_key: bytes) -> str:
    """A broker key's name: SHA-256 of the raw Ed25519 public key, lowercase hex."""
    return hashlib.sha256(public_key).hexdigest()


def bundle_digest(bundle: EvidenceBundle) -> str:
    """SHA-256 hex of the canonical JSON of ``bundle``: what the broker judged, exactly."""
    return canonical_sha256(bundle.model_dump(mode="json")).hex()


def release_statement(*, resource: str, version: int, nonce: bytes, ephemeral_key: bytes,
                      evidence: str, sealed: bytes) -> bytes:
    """The bytes a broker signs for one release answer (module docstring)."""
    return canonical_json({
        "type": STATEMENT_TYPE,
        "resource": resource,
        "version": version,
        "nonce": nonce.hex(),
        "ephemeral_key": base64.b64encode(ephemeral_key).decode(),
        "evidence": evidence,
        "sealed": hashlib.sha256(sealed).hexdigest(),
    })


STANDING_TYPE = "medclave-kbs-standing/v1"


def standing_statement(*, resource: str, nonce: bytes, evidence: str, standing: str) -> bytes:
    """The bytes a broker signs for a standing answer: whether the enclave that sent this
    evidence (``evidence``: bundle_digest) for this nonce is revoked for ``resource``'s owner."""
    return canonical_json({"type": STANDING_TYPE, "resource": resource, "nonce": nonce.hex(),
                           "evidence": evidence, "standing": standing})


class BrokerSigner:
    """The broker's Ed25519 signing key (in memory; :meth:`load_or_create` keeps it in a 0600
    file beside the KEK)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes_raw()
        self.key_id = fingerprint(self.public_key)

    @classmethod
    def generate(cls) -> BrokerSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, text: str, *, where: str) -> BrokerSigner:
        """From base64 of the 32-byte seed (a file's content or an environment variable)."""
        try:
            seed = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError("config.invalid", f"{where}: the signing key is not base64") from exc
        if len(seed) != KEY_BYTES:
            raise InputError("config.invalid", f"{where}: the signing key must be {KEY_BYTES} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load_or_create(cls, path: Path) -> BrokerSigner:
        if path.exists():
            return cls.from_seed(read_secret_text(path, "signing key"), where=path.name)
        seed = os.urandom(KEY_BYTES)
        create_secret_file(path, base64.b64encode(seed) + b"\n")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, statement: bytes) -> bytes:
        return self._key.sign(statement)


def parse_public_key(value: str | bytes, *, where: str = "broker key") -> bytes:
    """A broker public key: 32 raw bytes, or base64 (or hex) of them; ``config.invalid``."""
    if isinstance(value, bytes):
        raw = value
    else:
        text = value.strip()
        try:
            raw = (bytes.fromhex(text) if len(text) == 2 * KEY_BYTES
                   else base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InputError("config.invalid", f"{where} is not base64 or hex") from exc
    if len(raw) != KEY_BYTES:
        raise InputError("config.invalid", f"{where} is not a {KEY_BYTES}-byte Ed25519 key")
    return raw


@dataclass(frozen=True)
class TrustedBrokers:
    """The broker keys an enclave accepts release answers from. Refuses to be empty: an enclave
    that trusts no broker key would have to take any answer."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise InputError("config.invalid", "no trusted key broker key: set kbs_keys (the "
                             "broker's public key, `medclave kbs key show`)")
        if len(self.keys) > MAX_TRUSTED_KEYS:
            raise InputError("config.invalid", f"at most {MAX_TRUSTED_KEYS} broker keys")
        for key in self.keys:
            parse_public_key(key)

    @classmethod
    def of(cls, values: Iterable[str | bytes]) -> TrustedBrokers:
        return cls(tuple(parse_public_key(v) for v in values))

    def fingerprints(self) -> list[str]:
        """What the enclave's runtime states as ``kbs_keys`` (sorted, so canonical)."""
        return sorted({fingerprint(k) for k in self.keys})

    def verify(self, key_id: object, signature: object, statement: bytes) -> None:
        """Raise ``kbs.answer_unauthenticated`` unless a trusted key signed ``statement``."""
        by_id = {fingerprint(k): k for k in self.keys}
        if not isinstance(key_id, str) or key_id not in by_id:
            raise KbsError("kbs.answer_unauthenticated",
                           "the release answer is not signed by a trusted broker key")
        if not isinstance(signature, str):
            raise KbsError("kbs.answer_unauthenticated", "the release answer carries no signature")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise KbsError("kbs.answer_unauthenticated", "the signature is not base64") from None
        if len(raw) != SIGNATURE_BYTES:
            raise KbsError("kbs.answer_unauthenticated", "the signature is not 64 bytes")
        try:
            Ed25519PublicKey.from_public_bytes(by_id[key_id]).verify(raw, statement)
        except InvalidSignature:
            raise KbsError("kbs.answer_unauthenticated",
                           "the release answer's signature does not verify: it was altered or "
                           "answers another request") from None
