"""Compact JWS with ES256 (RFC 7515, RFC 7518 §3.4): just what attestation results need.

Verification takes the key from the caller and accepts exactly one algorithm, so neither
``alg: none`` nor algorithm confusion can arise (RFC 8725 §2.1, §3.1).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from medclave.crypto.canonical import canonical_json
from medclave.errors import CryptoError

MAX_TOKEN_BYTES = 64 * 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if len(text) > MAX_TOKEN_BYTES * 2:
        raise CryptoError("protocol.bad_message", "base64url field too long")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise CryptoError("protocol.bad_message", "invalid base64url") from exc


def sign_es256(payload: dict[str, Any], key: ec.EllipticCurvePrivateKey, *, kid: str | None = None,
               typ: str = "JWT") -> str:
    if not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError("crypto.bad_key", "ES256 needs a P-256 key")
    header: dict[str, Any] = {"alg": "ES256", "typ": typ}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(payload))}"
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def verify_es256(token: str, key: ec.EllipticCurvePublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a token signed by ``key``; raises :class:`CryptoError` otherwise."""
    if len(token) > MAX_TOKEN_BYTES:
        raise CryptoError("protocol.bad_message", "token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise CryptoError("protocol.bad_message", "not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        payload = json.loads(b64url_decode(parts[1]))
    # RecursionError: nesting deeper than the parser's stack, before any signature is checked.
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CryptoError("protocol.bad_message", "JWS header or payload is not JSON") from exc
    if not isinstance(header, dict) or header.get("alg") != "ES256" or "crit" in header:
        raise CryptoError("crypto.unsupported_suite", "only ES256 without crit is accepted")
    if not isinstance(payload, dict):
        raise CryptoError("protocol.bad_message", "JWS payload is not an object")
    sig = b64url_decode(parts[2])
    if len(sig) != 64 or not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError("crypto.signature_invalid", "bad ES256 signature length or key")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CryptoError("crypto.signature_invalid", "JWS signature does not verify") from exc
    return header, payload
