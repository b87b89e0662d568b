"""A small, strict JWS compact verifier (RFC 7515) and JWK reader (RFC 7517/7518/8037).

Only what Medclave's access tokens and DPoP proofs need, and nothing that has hurt JWT libraries:

- The header is parsed under a size bound, duplicate members are refused (RFC 7515 §4 lets a
  parser refuse them; we do, so two readers never see two different headers), and ``crit`` is
  refused because we implement no extension (§4.1.11).
- ``alg`` is checked against an allow-list of asymmetric algorithms BEFORE any key is looked up.
  ``none`` and every HMAC algorithm are refused outright, so a public key can never be used as an
  HMAC secret (the classic algorithm-confusion attack, RFC 8725 §2.1 and §3.1).
- The key's type must match the algorithm (RFC 8725 §3.1): ES256 needs an EC P-256 key, EdDSA an
  OKP Ed25519 key, RS256 an RSA key of at least 2048 bits. A JWK whose own ``alg`` or ``use``
  says otherwise is not used.
- base64url is decoded strictly: no padding, no characters outside the alphabet, and only the
  canonical encoding (RFC 7515 §2 and RFC 4648 §3.5), so one token has one byte form.

Errors are :class:`medclave.errors.AuthError` with ``auth.*`` codes; callers wrapping this for
DPoP proofs re-raise under ``auth.dpop_invalid``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medclave.errors import AuthError

# The only algorithms Medclave accepts (issue 6). Everything else, `none` and HS* included, is
# refused before a key is selected.
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset({"ES256", "EdDSA", "RS256"})

# Bounds on untrusted input. A real access token is a few hundred bytes to ~2 KiB.
MAX_TOKEN_LENGTH: Final = 8192
MAX_HEADER_LENGTH: Final = 2048  # base64url characters of the protected header
MAX_JWK_FIELD: Final = 1400  # base64url characters of one JWK member (RSA-8192 modulus fits)
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192

# Members that make a JWK private (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, code: str = "auth.token_malformed", what: str = "value") -> bytes:
    """Strict base64url without padding; only the canonical encoding of the bytes is accepted."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise AuthError(code, f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules these out
        raise AuthError(code, f"{what} is not base64url") from exc
    if b64url_encode(data) != text:
        raise AuthError(code, f"{what} is not canonically encoded (non-zero padding bits)")
    return data


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json_object(data: bytes, *, code: str, what: str) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes: no duplicate members, no NaN/Infinity, bounded depth."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AuthError(code, f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise AuthError(code, f"{what} is not a JSON object")
    return value


@dataclass(frozen=True)
class CompactJws:
    """A parsed, NOT yet verified, JWS in compact serialization."""

    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def parse_compact(
    token: str,
    *,
    algorithms: frozenset[str],
    max_length: int = MAX_TOKEN_LENGTH,
) -> CompactJws:
    """Split and decode a compact JWS; check ``alg`` against ``algorithms`` before anything else.

    Raises ``auth.token_malformed`` or ``auth.algorithm_forbidden``. The signature is NOT checked
    here: call :func:`verify_signature` with a key chosen for the returned ``alg``.
    """
    if not algorithms <= SUPPORTED_ALGORITHMS:
        raise AuthError("auth.algorithm_forbidden", "allow-list names unsupported algorithms")
    if not isinstance(token, str) or not token:
        raise AuthError("auth.token_malformed", "the token is empty")
    if len(token) > max_length:
        raise AuthError("auth.token_malformed", f"the token exceeds {max_length} characters")
    parts = token.split(".")
    if len(parts) != 3:
        # Five parts would be a JWE (RFC 7516); we accept signed tokens only.
        raise AuthError("auth.token_malformed", "a compact JWS has exactly three parts")
    header_b64, payload_b64, signature_b64 = parts
    if len(header_b64) > MAX_HEADER_LENGTH:
        raise AuthError("auth.token_malformed", "the JOSE header is too large")
    header = strict_json_object(
        b64url_decode(header_b64, what="header"), code="auth.token_malformed", what="header"
    )
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise AuthError("auth.token_malformed", "the header has no 'alg'")
    if alg not in algorithms:
        # `none`, HS256/384/512 and anything unknown end here, before a key is selected.
        raise AuthError("auth.algorithm_forbidden", f"algorithm {alg[:32]!r} is not allowed")
    if "crit" in header:
        raise AuthError("auth.token_malformed", "critical header extensions are not supported")
    if "b64" in header:
        raise AuthError("auth.token_malformed", "unencoded payloads (RFC 7797) are not supported")
    payload = strict_json_object(
        b64url_decode(payload_b64, what="payload"), code="auth.token_malformed", what="payload"
    )
    signature = b64url_decode(signature_b64, what="signature")
    if not signature:
        raise AuthError("auth.signature_invalid", "the token carries no signature")
    return CompactJws(
        header=header,
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )


# --- JWK ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jwk:
    """A public verification key read from a JWK, with the algorithm it may be used with."""

    key: PublicKey
    algorithm: str  # the one JWS alg this key type serves
    kid: str | None
    thumbprint: str  # RFC 7638 SHA-256 thumbprint, base64url

    def to_public_dict(self) -> dict[str, str]:
        out = public_jwk_members(self.key)
        if self.kid is not None:
            out["kid"] = self.kid
        out["alg"] = self.algorithm
        out["use"] = "sig"
        return out


def _field(obj: Mapping[str, Any], name: str) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > MAX_JWK_FIELD:
        raise AuthError("auth.key_unknown", f"JWK member {name!r} is missing or too long")
    return b64url_decode(value, code="auth.key_unknown", what=f"JWK member {name!r}")


def parse_jwk(obj: Any, *, allow_private: bool = False) -> Jwk:
    """A public key from one JWK; raises ``auth.key_unknown`` when unusable.

    A JWK carrying private members is refused (a JWKS or a DPoP header must hold public keys
    only, RFC 9449 §4.3 check 7), unless ``allow_private`` for reading our own signing key.
    """
    if not isinstance(obj, Mapping):
        raise AuthError("auth.key_unknown", "a JWK is not an object")
    if not allow_private and PRIVATE_MEMBERS & set(obj):
        raise AuthError("auth.key_unknown", "the JWK holds private key material")
    kty = obj.get("kty")
    key: PublicKey
    try:
        if kty == "OKP":
            if obj.get("crv") != "Ed25519":
                raise AuthError("auth.key_unknown", "only the Ed25519 OKP curve is supported")
            x = _field(obj, "x")
            if len(x) != 32:
                raise AuthError("auth.key_unknown", "an Ed25519 key is 32 bytes")
            key, alg = Ed25519PublicKey.from_public_bytes(x), "EdDSA"
        elif kty == "EC":
            if obj.get("crv") != "P-256":
                raise AuthError("auth.key_unknown", "only the P-256 EC curve is supported")
            x, y = _field(obj, "x"), _field(obj, "y")
            if len(x) != 32 or len(y) != 32:
                raise AuthError("auth.key_unknown", "P-256 coordinates are 32 bytes each")
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            )
            key, alg = numbers.public_key(), "ES256"  # raises ValueError if off the curve
        elif kty == "RSA":
            n, e = _field(obj, "n"), _field(obj, "e")
            modulus, exponent = int.from_bytes(n, "big"), int.from_bytes(e, "big")
            if not MIN_RSA_BITS <= modulus.bit_length() <= MAX_RSA_BITS:
                raise AuthError("auth.key_unknown", "RSA keys must be 2048 to 8192 bits")
            if exponent < 3 or exponent % 2 == 0 or exponent.bit_length() > 32:
                raise AuthError("auth.key_unknown", "the RSA public exponent is unacceptable")
            key, alg = rsa.RSAPublicNumbers(exponent, modulus).public_key(), "RS256"
        else:
            raise AuthError("auth.key_unknown", f"key type {str(kty)[:16]!r} is not supported")
    except ValueError as exc:
        raise AuthError("auth.key_unknown", f"the JWK is not a valid public key: {exc}") from exc
    declared = obj.get("alg")
    if declared is not None and declared != alg:
        raise AuthError("auth.key_unknown", f"the JWK is declared for {str(declared)[:16]!r}")
    use = obj.get("use")
    if use is not None and use != "sig":
        raise AuthError("auth.key_unknown", "the JWK is not a signing key")
    ops = obj.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise AuthError("auth.key_unknown", "the JWK's key_ops do not include 'verify'")
    kid = obj.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
        raise AuthError("auth.key_unknown", "the JWK 'kid' must be a short string")
    return Jwk(key=key, algorithm=alg, kid=kid, thumbprint=jwk_thumbprint(key))


def public_jwk_members(key: PublicKey) -> dict[str, str]:
    """The required public members of a key's JWK, the input of an RFC 7638 thumbprint."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuthError("auth.key_unknown", "only P-256 EC keys are supported")
        nums = key.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url_encode(nums.x.to_bytes(32, "big")),
            "y": b64url_encode(nums.y.to_bytes(32, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rnums = key.public_numbers()
        return {
            "e": b64url_encode(rnums.e.to_bytes((rnums.e.bit_length() + 7) // 8, "big")),
            "kty": "RSA",
            "n": b64url_encode(rnums.n.to_bytes((rnums.n.bit_length() + 7) // 8, "big")),
        }
    raise AuthError("auth.key_unknown", "unsupported key type")


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, without whitespace."""
    members = public_jwk_members(key)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuthError("auth.key_unknown", "only P-256 EC keys are supported")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    raise AuthError("auth.key_unknown", "unsupported key type")


# --- signatures -------------------------------------------------------------------------------


def verify_signature(jws: CompactJws, key: Jwk) -> None:
    """Check ``jws`` under ``key``; the key's type must be the one its ``alg`` names."""
    alg = jws.alg
    if key.algorithm != alg:
        # RFC 8725 §3.1: the algorithm is tied to the key, never taken from the token alone.
        raise AuthError("auth.algorithm_forbidden", f"{alg} does not match the key type")
    sig, data = jws.signature, jws.signing_input
    try:
        if alg == "EdDSA" and isinstance(key.key, Ed25519PublicKey):
            key.key.verify(sig, data)
        elif alg == "ES256" and isinstance(key.key, ec.EllipticCurvePublicKey):
            # RFC 7518 §3.4: R || S, 32 bytes each, not DER.
            if len(sig) != 64:
                raise AuthError("auth.signature_invalid", "an ES256 signature is 64 bytes")
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            der = encode_dss_signature(r, s)
            key.key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256" and isinstance(key.key, rsa.RSAPublicKey):
            if len(sig) != (key.key.key_size + 7) // 8:
                raise AuthError("auth.signature_invalid", "the RS256 signature has the wrong size")
            key.key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise AuthError("auth.algorithm_forbidden", f"{alg} does not match the key type")
    except InvalidSignature as exc:
        raise AuthError("auth.signature_invalid", "the signature does not verify") from exc


def sign_compact(header: Mapping[str, Any], payload: Mapping[str, Any], key: PrivateKey) -> str:
    """Produce a compact JWS; ``alg`` is set from the key type (callers cannot mislabel it)."""
    alg = algorithm_for(key)
    full_header = {**header, "alg": alg}
    h = b64url_encode(json.dumps(full_header, separators=(",", ":")).encode("utf-8"))
    p = b64url_encode(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    data = f"{h}.{p}".encode("ascii")
    if isinstance(key, Ed25519PrivateKey):
        sig = key.sign(data)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return f"{h}.{p}.{b64url_encode(sig)}"
