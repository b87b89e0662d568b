"""Key-encryption keys: every secret the broker holds is stored wrapped, never in plain.

:class:`KeyWrapper` is the seam a cloud KMS or Vault transit engine implements later (their
encrypt/decrypt APIs take the same "encryption context" we pass as AAD). The local wrappers use
AES-256-GCM (NIST SP 800-38D) with a random 96-bit nonce; the AAD names the resource and version,
so a wrapped secret moved to another row of the database no longer opens.

Wrapped form: ``b"MKW1" || kek_id (8) || nonce (12) || ciphertext||tag``. ``kek_id`` is the first
8 bytes of SHA-256 over the KEK, so opening with the wrong KEK says so instead of "tampered".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medclave.errors import CryptoError, InputError
from medclave.util.files import create_secret_file, read_secret_text

MAGIC = b"MKW1"
KEK_BYTES = 32
NONCE_BYTES = 12
ID_BYTES = 8
DEFAULT_KEK_ENV = "MEDCLAVE_KBS_KEK"
MAX_WRAPPED_BYTES = 1 << 20


class KeyWrapper(Protocol):
    """Wraps and unwraps secrets under a key-encryption key the broker never writes out."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...


class AesGcmKek:
    """A 256-bit KEK held in memory; the file and environment loaders below build it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_BYTES:
            raise InputError("config.invalid", f"the KEK must be {KEK_BYTES} bytes")
        self._aead = AESGCM(key)
        self._id = hashlib.sha256(b"medclave-kek-id" + key).digest()[:ID_BYTES]

    @property
    def key_id(self) -> str:
        return self._id.hex()

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + self._id + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        head = len(MAGIC) + ID_BYTES + NONCE_BYTES
        if (
            len(wrapped) > MAX_WRAPPED_BYTES
            or len(wrapped) < head + 16
            or not wrapped.startswith(MAGIC)
        ):
            raise CryptoError("crypto.decrypt_failed", "not a wrapped secret")
        if wrapped[len(MAGIC) : len(MAGIC) + ID_BYTES] != self._id:
            raise InputError("config.invalid", "this secret was wrapped under another KEK")
        nonce = wrapped[len(MAGIC) + ID_BYTES : head]
        try:
            return self._aead.decrypt(nonce, wrapped[head:], aad)
        except InvalidTag as exc:
            raise CryptoError(
                "crypto.decrypt_failed", "wrapped secret altered or misplaced"
            ) from exc


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError("config.invalid", f"{where}: the KEK is not base64") from exc
    if len(key) != KEK_BYTES:
        raise InputError("config.invalid", f"{where}: the KEK must be {KEK_BYTES} bytes")
    return key


class FileKek(AesGcmKek):
    """A KEK in a file only its owner can read (mode 0600 or stricter): looser is refused."""

    @classmethod
    def load(cls, path: Path) -> FileKek:
        return cls(_decode_key(read_secret_text(path, "KEK"), path.name))

    @classmethod
    def create(cls, path: Path) -> FileKek:
        """A fresh random KEK written 0600; never overwrites an existing file."""
        key = os.urandom(KEK_BYTES)
        create_secret_file(path, base64.b64encode(key) + b"\n")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> FileKek:
        if path.exists():
            return cls.load(path)
        return cls.create(path)


class EnvKek(AesGcmKek):
    """A KEK from an environment variable (base64 of 32 bytes), for containers given a secret."""

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEK_ENV) -> EnvKek:
        value = os.environ.get(name)
        if not value:
            raise InputError("config.invalid", f"environment variable {name} holds no KEK")
        return cls(_decode_key(value, name))

    @classmethod
    def from_value(cls, value: str, *, where: str = DEFAULT_KEK_ENV) -> EnvKek:
        return cls(_decode_key(value, where))


def new_kek_b64() -> str:
    """A fresh KEK in the form :class:`EnvKek` reads."""
    return base64.b64encode(os.urandom(KEK_BYTES)).decode()
