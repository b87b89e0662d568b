"""Oblivious HTTP message encapsulation (RFC 9458).

Key configurations (§3), the ``application/ohttp-keys`` list (§3.2), and request (§4.3) and
response (§4.4) encapsulation for DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM.

Server side: :meth:`OhttpKeyPair.generate`, :meth:`OhttpKeyPair.decapsulate_request` (or
:func:`decapsulate_request` over several keys during a rotation), then
:meth:`ResponseContext.encapsulate`. Client side: :func:`encapsulate_request`, then
:meth:`ClientContext.decapsulate_response`.

The ``ephemeral_private_key`` and ``response_nonce`` arguments exist so that the worked example of
RFC 9458 Appendix A can be reproduced byte for byte; production callers leave them unset.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from medclave.crypto import hpke
from medclave.crypto.hpke import AEAD_AES_128_GCM, KDF_HKDF_SHA256, KEM_X25519_HKDF_SHA256
from medclave.errors import CryptoError, InputError

KEYS_MEDIA_TYPE = "application/ohttp-keys"
REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"

REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"

AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

# Public key sizes (Npk, RFC 9180 §7.1) of the KEMs whose configurations we can parse; only
# X25519 is used, the others are parsed so a mixed application/ohttp-keys list can be read.
_NPK = {0x0010: 65, 0x0011: 97, 0x0012: 133, 0x0020: 32, 0x0021: 56}
HEADER_SIZE = 7  # key_id (1) | kem_id (2) | kdf_id (2) | aead_id (2)
RESPONSE_NONCE_SIZE = max(hpke.NN, hpke.NK)  # §4.4: max(Nn, Nk)
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class SymmetricAlgorithm:
    kdf_id: int
    aead_id: int


SUPPORTED = SymmetricAlgorithm(KDF_HKDF_SHA256, AEAD_AES_128_GCM)


@dataclass(frozen=True)
class KeyConfig:
    """One key configuration (RFC 9458 §3.1)."""

    key_id: int
    kem_id: int
    public_key: bytes
    symmetric: tuple[SymmetricAlgorithm, ...] = (SUPPORTED,)

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 0xFF:
            raise CryptoError("protocol.bad_message", "key_id must fit one byte")
        if not 0 <= self.kem_id <= 0xFFFF:
            raise CryptoError("protocol.bad_message", "kem_id must fit two bytes")
        npk = _NPK.get(self.kem_id)
        if npk is not None and len(self.public_key) != npk:
            raise CryptoError("crypto.bad_key", f"public key must be {npk} bytes for this KEM")
        if not 1 <= len(self.symmetric) <= 0xFFFF // 4:
            raise CryptoError("protocol.bad_message", "a key config lists 1..16383 algorithms")
        for alg in self.symmetric:
            if not (0 <= alg.kdf_id <= 0xFFFF and 0 <= alg.aead_id <= 0xFFFF):
                raise CryptoError("protocol.bad_message", "algorithm ids must fit two bytes")

    def encode(self) -> bytes:
        algs = b"".join(a.kdf_id.to_bytes(2, "big") + a.aead_id.to_bytes(2, "big")
                        for a in self.symmetric)
        return (bytes([self.key_id]) + self.kem_id.to_bytes(2, "big") + self.public_key
                + len(algs).to_bytes(2, "big") + algs)

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        config, end = _parse_config(bytes(data), 0)
        if end != len(data):
            raise CryptoError("protocol.bad_message", "trailing bytes after the key config")
        return config

    def supports(self, alg: SymmetricAlgorithm = SUPPORTED) -> bool:
        return self.kem_id == KEM_X25519_HKDF_SHA256 and alg in self.symmetric


def _parse_config(data: bytes, offset: int) -> tuple[KeyConfig, int]:
    if len(data) - offset < 3:
        raise CryptoError("protocol.bad_message", "key config is truncated")
    key_id = data[offset]
    kem_id = int.from_bytes(data[offset + 1:offset + 3], "big")
    npk = _NPK.get(kem_id)
    if npk is None:
        raise CryptoError("crypto.unsupported_suite", f"KEM 0x{kem_id:04x} is not supported")
    pos = offset + 3
    if len(data) - pos < npk + 2:
        raise CryptoError("protocol.bad_message", "key config is truncated")
    public_key = data[pos:pos + npk]
    pos += npk
    algs_len = int.from_bytes(data[pos:pos + 2], "big")
    pos += 2
    # §3.1: HPKE Symmetric Algorithms Length (16) = 4..65532, a whole number of 4-byte entries.
    if algs_len < 4 or algs_len % 4 or len(data) - pos < algs_len:
        raise CryptoError("protocol.bad_message", "key config algorithm list is malformed")
    symmetric = tuple(
        SymmetricAlgorithm(int.from_bytes(data[i:i + 2], "big"),
                           int.from_bytes(data[i + 2:i + 4], "big"))
        for i in range(pos, pos + algs_len, 4)
    )
    return KeyConfig(key_id, kem_id, public_key, symmetric), pos + algs_len


def encode_keys(configs: Iterable[KeyConfig]) -> bytes:
    """``application/ohttp-keys`` (§3.2): each config prefixed by its 2-byte length."""
    out = bytearray()
    for config in configs:
        raw = config.encode()
        if len(raw) > 0xFFFF:
            raise CryptoError("protocol.bad_message", "key config too long for the keys list")
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


def decode_keys(data: bytes, *, max_size: int = 64 * 1024) -> tuple[KeyConfig, ...]:
    """Parse ``application/ohttp-keys``; configurations with an unknown KEM are skipped (§3.2).

    Raises ``crypto.unsupported_suite`` if nothing usable remains: the client then has no key.
    """
    if len(data) > max_size:
        raise InputError("input.too_large", "ohttp-keys list exceeds the size limit")
    data = bytes(data)
    configs: list[KeyConfig] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise CryptoError("protocol.bad_message", "ohttp-keys entry length is truncated")
        size = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        if size == 0 or len(data) - pos < size:
            raise CryptoError("protocol.bad_message", "ohttp-keys entry is truncated")
        try:
            configs.append(KeyConfig.decode(data[pos:pos + size]))
        except CryptoError as exc:
            if exc.code != "crypto.unsupported_suite":
                raise
        pos += size
    usable = tuple(c for c in configs if c.supports())
    if not usable:
        raise CryptoError("crypto.unsupported_suite", "no usable key configuration")
    return usable


# ---------------------------------------------------------------------------------------------
# request and response encapsulation


def request_header(key_id: int, alg: SymmetricAlgorithm = SUPPORTED) -> bytes:
    return (bytes([key_id]) + KEM_X25519_HKDF_SHA256.to_bytes(2, "big")
            + alg.kdf_id.to_bytes(2, "big") + alg.aead_id.to_bytes(2, "big"))


def request_info(label: bytes, header: bytes) -> bytes:
    # §4.3: info = concat(encode_str("message/bhttp request"), encode(1, 0), hdr)
    return label + b"\x00" + header


def derive_response_keys(secret: bytes, enc: bytes, response_nonce: bytes) -> tuple[bytes, bytes]:
    """§4.4: ``prk = Extract(enc || response_nonce, secret)``; key and nonce expanded from it."""
    prk = hmac.new(enc + response_nonce, secret, hashlib.sha256).digest()  # HKDF-Extract
    key = HKDFExpand(hashes.SHA256(), hpke.NK, b"key").derive(prk)
    nonce = HKDFExpand(hashes.SHA256(), hpke.NN, b"nonce").derive(prk)
    return key, nonce


def _check_size(data: bytes, max_size: int) -> None:
    if len(data) > max_size:
        raise InputError("input.too_large", "encapsulated message exceeds the size limit")


def _parse_header(data: bytes, configs: Sequence[KeyConfig]) -> tuple[KeyConfig, bytes]:
    header = bytes(data[:HEADER_SIZE])
    if len(header) < HEADER_SIZE:
        raise CryptoError("protocol.bad_message", "encapsulated request header is truncated")
    config = next((c for c in configs if c.key_id == header[0]), None)
    if config is None:
        raise CryptoError("crypto.key_unknown", f"no key with id {header[0]}")
    kem_id = int.from_bytes(header[1:3], "big")
    alg = SymmetricAlgorithm(int.from_bytes(header[3:5], "big"),
                             int.from_bytes(header[5:7], "big"))
    # §4.3: the gateway refuses algorithms its key configuration does not list.
    if kem_id != config.kem_id or alg not in config.symmetric or not config.supports(alg):
        raise CryptoError("crypto.unsupported_suite", "request uses an unsupported suite")
    return config, header


@dataclass(frozen=True)
class OhttpKeyPair:
    """A gateway key: the private key and the configuration that advertises it."""

    key_id: int
    private_key: X25519PrivateKey = field(repr=False)
    config: KeyConfig = field(init=False)

    def __post_init__(self) -> None:
        config = KeyConfig(self.key_id, KEM_X25519_HKDF_SHA256,
                           hpke.public_key_bytes(self.private_key), (SUPPORTED,))
        object.__setattr__(self, "config", config)

    @classmethod
    def generate(cls, key_id: int) -> OhttpKeyPair:
        return cls(key_id, hpke.generate_private_key())

    @classmethod
    def from_private_bytes(cls, key_id: int, raw: bytes) -> OhttpKeyPair:
        return cls(key_id, hpke.private_key_from_bytes(raw))

    def decapsulate_request(self, data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE
                            ) -> tuple[bytes, ResponseContext]:
        return decapsulate_request([self], data, max_size=max_size)


def decapsulate_request(keys: Iterable[OhttpKeyPair], data: bytes, *,
                        max_size: int = DEFAULT_MAX_MESSAGE) -> tuple[bytes, ResponseContext]:
    """Gateway side of §4.3: ``(bhttp request, context for the response)``."""
    _check_size(data, max_size)
    pairs = {k.key_id: k for k in keys}
    config, header = _parse_header(data, [k.config for k in pairs.values()])
    if len(data) < HEADER_SIZE + hpke.NENC + hpke.NT:
        raise CryptoError("protocol.bad_message", "encapsulated request is truncated")
    enc = bytes(data[HEADER_SIZE:HEADER_SIZE + hpke.NENC])
    ctx = hpke.recipient_context(pairs[config.key_id].private_key, enc,
                                 request_info(REQUEST_LABEL, header))
    plaintext = hpke.context_open(ctx, data[HEADER_SIZE + hpke.NENC:])
    return plaintext, ResponseContext(enc, _export(ctx, RESPONSE_LABEL))


def _export(ctx: Any, label: bytes) -> bytes:
    return bytes(ctx.export(label, RESPONSE_NONCE_SIZE))


class ResponseContext:
    """What the gateway keeps between decapsulating a request and encapsulating its response."""

    __slots__ = ("_enc", "_secret", "_used")

    def __init__(self, enc: bytes, secret: bytes) -> None:
        self._enc = enc
        self._secret = secret
        self._used = False

    def encapsulate(self, response: bytes, *, response_nonce: bytes | None = None) -> bytes:
        """§4.4: ``response_nonce || Seal(aead_key, aead_nonce, "", response)``. Single use."""
        if self._used:
            raise CryptoError("protocol.bad_message", "a response context encapsulates once")
        self._used = True
        nonce = _response_nonce(response_nonce)
        key, aead_nonce = derive_response_keys(self._secret, self._enc, nonce)
        return nonce + AESGCM(key).encrypt(aead_nonce, bytes(response), b"")


def _response_nonce(given: bytes | None) -> bytes:
    if given is None:
        return os.urandom(RESPONSE_NONCE_SIZE)
    if len(given) != RESPONSE_NONCE_SIZE:
        raise CryptoError("protocol.bad_message", "response nonce has the wrong length")
    return bytes(given)


def encapsulate_request(config: KeyConfig, plaintext: bytes, *,
                        ephemeral_private_key: bytes | None = None
                        ) -> tuple[bytes, ClientContext]:
    """Client side of §4.3: ``(encapsulated request, context to open the response)``."""
    if not config.supports():
        raise CryptoError("crypto.unsupported_suite",
                          "the key config does not offer X25519/HKDF-SHA256/AES-128-GCM")
    header = request_header(config.key_id)
    enc, ctx = hpke.sender_context(config.public_key, request_info(REQUEST_LABEL, header),
                                   ephemeral_private_key=ephemeral_private_key)
    ciphertext = hpke.context_seal(ctx, plaintext)
    return header + enc + ciphertext, ClientContext(enc, _export(ctx, RESPONSE_LABEL))


class ClientContext:
    """What the client keeps to open the response to its request."""

    __slots__ = ("_enc", "_secret")

    def __init__(self, enc: bytes, secret: bytes) -> None:
        self._enc = enc
        self._secret = secret

    def decapsulate_response(self, data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE) -> bytes:
        _check_size(data, max_size)
        if len(data) < RESPONSE_NONCE_SIZE + hpke.NT:
            raise CryptoError("crypto.decrypt_failed", "encapsulated response is too short")
        nonce = bytes(data[:RESPONSE_NONCE_SIZE])
        key, aead_nonce = derive_response_keys(self._secret, self._enc, nonce)
        try:
            return AESGCM(key).decrypt(aead_nonce, bytes(data[RESPONSE_NONCE_SIZE:]), b"")
        except InvalidTag as exc:
            raise CryptoError("crypto.decrypt_failed") from exc
