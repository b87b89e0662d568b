"""Single-shot HPKE (RFC 9180) to an X25519 key, and the X25519 key helpers the crypto layer shares.

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode, the one the platform
uses everywhere (OHTTP, key release). ``seal`` returns ``enc || ciphertext`` (RFC 9180 §6.1
single-shot APIs); the key broker uses it to seal a released key to an enclave's ephemeral key.

``pyhpke`` does the key schedule (``cryptography`` 50 has HPKE but no exporter, which OHTTP needs).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyPair
from pyhpke.keys.x25519_key import X25519Key

from medclave.errors import CryptoError

KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001

NENC = 32  # RFC 9180 §7.1: Nenc for DHKEM(X25519)
NPK = 32
NSK = 32
NK = 16  # AES-128-GCM key
NN = 12  # AES-128-GCM nonce
NT = 16  # AES-128-GCM tag

SUITE = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM
)


def generate_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_key_from_bytes(raw: bytes) -> X25519PrivateKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != NSK:
        raise CryptoError("crypto.bad_key", f"an X25519 private key is {NSK} bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def private_key_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def public_key_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_from_bytes(raw: bytes) -> X25519PublicKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != NPK:
        raise CryptoError("crypto.bad_key", f"an X25519 public key is {NPK} bytes")
    return X25519PublicKey.from_public_bytes(bytes(raw))


def generate_keypair() -> tuple[X25519PrivateKey, bytes]:
    """A fresh private key and its raw 32-byte public key."""
    key = generate_private_key()
    return key, public_key_bytes(key)


def _as_private(key: X25519PrivateKey | bytes) -> X25519PrivateKey:
    return key if isinstance(key, X25519PrivateKey) else private_key_from_bytes(key)


def sender_context(public_key_raw: bytes, info: bytes, *,
                   ephemeral_private_key: bytes | None = None) -> tuple[bytes, Any]:
    """``SetupBaseS`` (RFC 9180 §5.1.1): ``(enc, context)``.

    ``ephemeral_private_key`` exists only so published test vectors can be reproduced; leave it
    None in production (a reused ephemeral key reuses the AEAD key and nonce).
    """
    recipient = X25519Key(public_key_from_bytes(public_key_raw))
    eks = None
    if ephemeral_private_key is not None:
        sk = private_key_from_bytes(ephemeral_private_key)
        eks = KEMKeyPair(X25519Key(sk), X25519Key(sk.public_key()))
    try:
        enc, ctx = SUITE.create_sender_context(recipient, info, eks=eks)
    except ValueError as exc:  # all-zero DH output: a low-order public key (RFC 9180 §7.1.4)
        raise CryptoError("crypto.bad_key", "the recipient public key is invalid") from exc
    return bytes(enc), ctx


def recipient_context(private_key: X25519PrivateKey | bytes, enc: bytes, info: bytes) -> Any:
    """``SetupBaseR`` (RFC 9180 §5.1.1); a bad ``enc`` is a decryption failure."""
    sk = X25519Key(_as_private(private_key))
    if len(enc) != NENC:
        raise CryptoError("crypto.decrypt_failed", "encapsulated key has the wrong length")
    try:
        return SUITE.create_recipient_context(bytes(enc), sk, info)
    except Exception as exc:  # pyhpke/cryptography raise ValueError for low-order points
        raise CryptoError("crypto.decrypt_failed", "encapsulated key is invalid") from exc


def context_open(ctx: Any, ciphertext: bytes, aad: bytes = b"") -> bytes:
    try:
        return bytes(ctx.open(bytes(ciphertext), aad))
    except Exception as exc:  # pyhpke.OpenError wraps InvalidTag
        raise CryptoError("crypto.decrypt_failed") from exc


def context_seal(ctx: Any, plaintext: bytes, aad: bytes = b"") -> bytes:
    try:
        return bytes(ctx.seal(bytes(plaintext), aad))
    except Exception as exc:  # pyhpke.SealError: the sequence number overflowed
        raise CryptoError("crypto.unsupported_suite", "HPKE context exhausted") from exc


def seal(public_key_raw: bytes, plaintext: bytes, info: bytes = b"", aad: bytes = b"", *,
         ephemeral_private_key: bytes | None = None) -> bytes:
    """Single-shot HPKE base-mode seal: ``enc || ciphertext``."""
    enc, ctx = sender_context(public_key_raw, info, ephemeral_private_key=ephemeral_private_key)
    return enc + context_seal(ctx, plaintext, aad)


def open(private_key: X25519PrivateKey | bytes, sealed: bytes,  # shadows the builtin: RFC 9180 Open
         info: bytes = b"", aad: bytes = b"") -> bytes:
    """Inverse of :func:`seal`; any failure is ``crypto.decrypt_failed``."""
    if len(sealed) < NENC + NT:
        raise CryptoError("crypto.decrypt_failed", "sealed message is too short")
    ctx = recipient_context(private_key, sealed[:NENC], info)
    return context_open(ctx, sealed[NENC:], aad)
