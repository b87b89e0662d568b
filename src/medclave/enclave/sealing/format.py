"""The sealed-conversation format, version 1: key derivation, records, AAD and the hash chain.

Pure functions over bytes (no I/O); the known-answer vector ``tests/vectors/sealing.json`` is
computed from this definition with primitives only. Notation: ``lp(x)`` is the 2-byte big-endian
length of ``x`` then ``x`` (UTF-8 for text); ``u32(i)`` a 4-byte big-endian integer.

* Conversation key: HKDF-SHA256 (RFC 5869) with ``IKM`` the tenant's sealing root (32 bytes,
  released by the key broker), ``salt`` the patient's client share (32 bytes, held only by the
  patient's app), ``info = "medclave-sealing/v1/conversation-key" || lp(tenant) || lp(subject)
  || lp(conversation id) || u32(root version)``, 32 bytes out. Extract keyed by the share means
  the root alone (the enclave, or whoever steals it) opens nothing without the patient's share,
  and the share alone opens nothing without an enclave the tenant's policy accepts.
* Record: ``0x01 || nonce (12 random bytes) || AES-256-GCM(key, nonce, plaintext, AAD)``; the
  plaintext is canonical JSON (RFC 8785) of the turn.
* Turn AAD: ``"medclave-sealing/v1/turn" 0x00 || lp(tenant) || lp(subject) || lp(conversation)
  || u32(index) || chain[index]``. Binding the index and the chain value before the turn makes a
  turn moved to another place, another conversation or another user fail to authenticate.
* Chain: ``chain[0] = SHA-256("medclave-sealing/v1/chain" 0x00 || lp(tenant) || lp(subject) ||
  lp(conversation))``, ``chain[i+1] = SHA-256(chain[i] || record[i])``.
* Head: a record of ``{"chain": hex(chain[n]), "turns": n, ...}`` under the head AAD
  (``"medclave-sealing/v1/head" 0x00 || lp(tenant) || lp(subject) || lp(conversation)``),
  re-sealed with a fresh nonce at each append. A dropped last turn leaves the head's count and
  chain unmatched; a dropped middle turn breaks the chain the next turn's AAD names.
* Owner pseudonym: ``HMAC-SHA256(HKDF(root, salt=None, info="medclave-sealing/v1/owner"),
  lp(tenant) || lp(subject))`` hex: how the store finds a user's conversations without holding
  their subject in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medclave.crypto.canonical import canonical_json, load_json
from medclave.errors import InputError, SealingError

FORMAT_VERSION: Final = 1
LABEL: Final = b"medclave-sealing/v1"
SHARE_BYTES: Final = 32
ROOT_BYTES: Final = 32
NONCE_BYTES: Final = 12
MAX_RECORD: Final = 256 * 1024  # one turn: a message or an answer, with room to spare
_TAG: Final = 16


def lp(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) > 0xFFFF:
        raise SealingError("sealing.not_found", "an identifier over 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _ids(tenant: str, subject: str, conversation: str) -> bytes:
    return lp(tenant) + lp(subject) + lp(conversation)


def conversation_key(root: bytes, share: bytes, tenant: str, subject: str, conversation: str,
                     root_version: int) -> bytes:
    """The AES-256 key of one conversation (see the module)."""
    if len(root) != ROOT_BYTES:
        raise SealingError("sealing.root_unavailable", "a sealing root is 32 bytes")
    if len(share) != SHARE_BYTES:
        raise SealingError("sealing.share_missing", "the client share is 32 bytes")
    info = (LABEL + b"/conversation-key" + _ids(tenant, subject, conversation)
            + root_version.to_bytes(4, "big"))
    return HKDF(hashes.SHA256(), 32, share, info).derive(root)


def owner_pseudonym(root: bytes, tenant: str, subject: str) -> str:
    key = HKDF(hashes.SHA256(), 32, None, LABEL + b"/owner").derive(root)
    return hmac.new(key, lp(tenant) + lp(subject), hashlib.sha256).hexdigest()


def chain_start(tenant: str, subject: str, conversation: str) -> bytes:
    return hashlib.sha256(LABEL + b"/chain\x00" + _ids(tenant, subject, conversation)).digest()


def chain_next(chain: bytes, record: bytes) -> bytes:
    return hashlib.sha256(chain + record).digest()


def turn_aad(tenant: str, subject: str, conversation: str, index: int, chain: bytes) -> bytes:
    return (LABEL + b"/turn\x00" + _ids(tenant, subject, conversation)
            + index.to_bytes(4, "big") + chain)


def head_aad(tenant: str, subject: str, conversation: str) -> bytes:
    return LABEL + b"/head\x00" + _ids(tenant, subject, conversation)


def seal(key: bytes, value: dict[str, Any], aad: bytes, *, nonce: bytes | None = None) -> bytes:
    """A record of ``value`` (``nonce`` fixed only by the known-answer vector)."""
    iv = nonce if nonce is not None else os.urandom(NONCE_BYTES)
    plaintext = canonical_json(value)
    if len(plaintext) > MAX_RECORD - 1 - NONCE_BYTES - _TAG:
        raise SealingError("sealing.too_large", "a turn over the record size limit")
    return bytes([FORMAT_VERSION]) + iv + AESGCM(key).encrypt(iv, plaintext, aad)


def open_record(key: bytes, record: bytes, aad: bytes) -> dict[str, Any]:
    """The turn sealed in ``record``; ``sealing.integrity_failed`` when it does not authenticate
    under ``aad`` (moved, altered) or is not a version-1 record of a JSON object."""
    if (not 1 + NONCE_BYTES + _TAG <= len(record) <= MAX_RECORD
            or record[0] != FORMAT_VERSION):
        raise SealingError("sealing.integrity_failed", "not a version-1 sealed record")
    iv, body = record[1:1 + NONCE_BYTES], record[1 + NONCE_BYTES:]
    try:
        plaintext = AESGCM(key).decrypt(iv, body, aad)
    except InvalidTag:
        raise SealingError("sealing.integrity_failed", "a record does not authenticate") from None
    try:
        value = load_json(plaintext, what="a sealed record")
    except InputError:
        value = None
    if not isinstance(value, dict):
        raise SealingError("sealing.integrity_failed", "a sealed record is not an object")
    return value
