"""Medclave's one JOSE implementation: a strict compact JWS (RFC 7515) and public JWKs (RFC 7517,
RFC 7518, RFC 8037), for attestation results (EAR tokens) and for access tokens and DPoP proofs.

It lives in ``crypto`` because the lowest layer that needs it is ``attestation``. It holds only
what those tokens need, and nothing that has hurt JWT libraries:

- base64url is decoded strictly (RFC 7515 §2, RFC 4648 §5): no padding, no character outside the
  alphabet, and only the canonical encoding (the unused trailing bits are zero), so one token has
  one text form. Python's ``urlsafe_b64decode`` drops characters outside the alphabet, so
  ``QU!JD`` would decode like ``QUJD``; we never call it on text we have not checked.
- Every segment, the header and the token are size-bounded before anything is decoded.
- The protected header is parsed with duplicate members refused (RFC 7515 §4 lets a parser refuse
  them; we do, so two readers never see two different headers); ``crit`` and ``b64`` are refused
  because we implement no extension (§4.1.11, RFC 7797).
- ``alg`` is checked against the caller's allow-list of asymmetric algorithms BEFORE any key is
  looked up: ``none`` and every HMAC algorithm end there, so a public key can never be used as an
  HMAC secret (RFC 8725 §2.1, §3.1). The key's own type then decides the algorithm: ES256 needs
  an EC P-256 key, EdDSA an OKP Ed25519 key, RS256 an RSA key of 2048 to 8192 bits.
- The payload is decoded but NOT parsed by :func:`parse_compact`: :func:`verified_claims` parses
  it (strict JSON again) only after the signature verified. A caller that must read a claim to
  choose the key (the issuer of an access token) does so explicitly, through
  :meth:`CompactJws.unverified_claims`, under the same strict parser.

ES256 signatures are ECDSA and so malleable: (r, n - s) verifies as well as (r, s) (SEC 1 §4.1.4
accepts both; RFC 7518 §3.4 does not ask for a low s, and common signers do not produce one). A
token's text therefore does not identify it: identify tokens by their claims (``jti``), never by
a hash of the token.

Which Medclave error a refusal becomes depends on the caller (an access token's ``401
auth.*``, an attestation result's ``attestation.*``): each passes its :class:`JoseErrors`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medclave.crypto.canonical import canonical_json
from medclave.errors import CryptoError, MedclaveError
from medclave.util.b64 import b64decode, b64encode

# The only algorithms Medclave implements; callers narrow this with their own allow-list.
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset({"ES256", "EdDSA", "RS256"})

# Bounds on untrusted input. A real access token is a few hundred bytes to ~2 KiB; an attestation
# result passes its own, larger bound.
MAX_TOKEN_LENGTH: Final = 8192
MAX_HEADER_LENGTH: Final = 2048  # base64url characters of the protected header
MAX_JWK_FIELD: Final = 1400  # base64url characters of one JWK member (RSA-8192 modulus fits)
MIN_RSA_BITS: Final = 2048
MAX_RSA_BITS: Final = 8192

# Members that make a JWK private (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

Failure = Literal["malformed", "algorithm", "signature", "key"]


@dataclass(frozen=True)
class JoseErrors:
    """The Medclave error each kind of JOSE refusal becomes for one caller.

    ``malformed``: not a well-formed token or JSON; ``algorithm``: ``alg`` not allowed, or not
    the key's; ``signature``: the signature does not verify; ``key``: a JWK or key is unusable.
    """

    error: type[MedclaveError]
    malformed: str
    algorithm: str
    signature: str
    key: str

    def __post_init__(self) -> None:
        for code in (self.malformed, self.algorithm, self.signature, self.key):
            self.error(code)  # an unknown code, or one of another family, fails here, at import

    def __call__(self, kind: Failure, detail: str) -> MedclaveError:
        code: str = getattr(self, kind)
        return self.error(code, detail)


# For callers in the crypto layer itself; auth and attestation bring their own.
CRYPTO_ERRORS: Final = JoseErrors(
    CryptoError,
    malformed="protocol.bad_message",
    algorithm="crypto.algorithm_forbidden",
    signature="crypto.signature_invalid",
    key="crypto.bad_key",
)


# --- base64url and JSON --------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return b64encode(data, url=True, pad=False)


def b64url_decode(text: str, *, errors: JoseErrors = CRYPTO_ERRORS, kind: Failure = "malformed",
                  what: str = "value") -> bytes:
    """Strict base64url without padding (RFC 7515 §2); only the canonical encoding of the
    bytes is accepted (:func:`medclave.util.b64.b64decode`)."""
    try:
        return b64decode(text, url=True, padding="forbidden")
    except ValueError as exc:
        raise errors(kind, f"{what} is not unpadded canonical base64url: {exc}") from None


def reject_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: a repeated member is an error (RFC 8259 §4
    leaves its meaning to the parser; two parsers must never read two different objects)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key[:64]!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400 parses to inf, which RFC 8259 §6 numbers cannot denote
        raise ValueError("number out of range")
    return value


def strict_json(data: bytes, *, errors: JoseErrors = CRYPTO_ERRORS, what: str = "JSON") -> Any:
    """Any JSON value from UTF-8 bytes (RFC 8259): no duplicate members, no NaN or Infinity,
    finite numbers, nesting bounded by the parser's stack; ``errors("malformed")`` otherwise.
    The one strict JSON reader: JOSE, attestation results and vTPM evidence use it."""
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=reject_duplicate_members,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    # RecursionError: nesting deeper than the parser's stack is a refusal, not a crash.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = type(exc).__name__ if isinstance(exc, RecursionError) else str(exc)[:200]
        raise errors("malformed", f"{what} is not valid JSON: {why}") from exc


def strict_json_object(data: bytes, *, errors: JoseErrors = CRYPTO_ERRORS,
                       what: str = "JSON") -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, read by :func:`strict_json`."""
    value = strict_json(data, errors=errors, what=what)
    if not isinstance(value, dict):
        raise errors("malformed", f"{what} is not a JSON object")
    return value


def compact_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


# --- compact JWS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactJws:
    """A compact JWS whose header is parsed and whose signature is NOT yet checked.

    ``payload_bytes`` is the decoded payload, unparsed; read it through :func:`verified_claims`.
    """

    header: Mapping[str, Any]
    payload_bytes: bytes
    signing_input: bytes
    signature: bytes
    errors: JoseErrors

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    def unverified_claims(self) -> dict[str, Any]:
        """The payload as a JSON object, BEFORE any signature check (strict parser, bounded).

        Only for choosing which key verifies the token (an access token's ``iss``) or for display;
        nothing read here may be trusted until :func:`verify_signature` has passed.
        """
        return strict_json_object(self.payload_bytes, errors=self.errors, what="payload")


def parse_compact(
    token: str,
    *,
    algorithms: frozenset[str],
    errors: JoseErrors,
    max_length: int = MAX_TOKEN_LENGTH,
) -> CompactJws:
    """Split and strictly decode a compact JWS; check ``alg`` against ``algorithms`` before a key
    is chosen. Raises ``errors``' malformed or algorithm refusal; checks no signature."""
    if not algorithms <= SUPPORTED_ALGORITHMS:
        raise errors("algorithm", "the allow-list names unsupported algorithms")
    if not isinstance(token, str) or not token:
        raise errors("malformed", "the token is empty")
    if len(token) > max_length:
        raise errors("malformed", f"the token exceeds {max_length} characters")
    parts = token.split(".")
    if len(parts) != 3:
        # Five parts would be a JWE (RFC 7516); we accept signed tokens only.
        raise errors("malformed", "a compact JWS has exactly three parts")
    header_b64, payload_b64, signature_b64 = parts
    if len(header_b64) > MAX_HEADER_LENGTH:
        raise errors("malformed", "the JOSE header is too large")
    header = strict_json_object(b64url_decode(header_b64, errors=errors, what="header"),
                                errors=errors, what="header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise errors("malformed", "the header has no 'alg'")
    if alg not in algorithms:
        # `none`, HS256/384/512 and anything unknown end here, before a key is selected.
        raise errors("algorithm", f"algorithm {alg[:32]!r} is not allowed")
    if "crit" in header:
        raise errors("malformed", "critical header extensions are not supported")
    if "b64" in header:
        raise errors("malformed", "unencoded payloads (RFC 7797) are not supported")
    # Decoded strictly (one text form per token), parsed only once the signature verified.
    payload = b64url_decode(payload_b64, errors=errors, what="payload")
    signature = b64url_decode(signature_b64, errors=errors, what="signature")
    if not signature:
        raise errors("signature", "the token carries no signature")
    return CompactJws(
        header=header,
        payload_bytes=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
        errors=errors,
    )


def verify_signature(jws: CompactJws, key: Jwk) -> None:
    """Check ``jws`` under ``key``; the key's type must be the one its ``alg`` names."""
    errors, alg = jws.errors, jws.alg
    if key.algorithm != alg:
        # RFC 8725 §3.1: the algorithm is tied to the key, never taken from the token alone.
        raise errors("algorithm", f"{alg} does not match the key type")
    sig, data = jws.signature, jws.signing_input
    try:
        if alg == "EdDSA" and isinstance(key.key, Ed25519PublicKey):
            key.key.verify(sig, data)
        elif alg == "ES256" and isinstance(key.key, ec.EllipticCurvePublicKey):
            # RFC 7518 §3.4: R || S, 32 bytes each, not DER.
            if len(sig) != 64:
                raise errors("signature", "an ES256 signature is 64 bytes")
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            key.key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
        elif alg == "RS256" and isinstance(key.key, rsa.RSAPublicKey):
            if len(sig) != (key.key.key_size + 7) // 8:
                raise errors("signature", "the RS256 signature has the wrong size")
            key.key.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise errors("algorithm", f"{alg} does not match the key type")
    except InvalidSignature as exc:
        raise errors("signature", "the signature does not verify") from exc


def verified_claims(jws: CompactJws, key: Jwk) -> dict[str, Any]:
    """The payload as a JSON object, parsed only after its signature verified under ``key``."""
    verify_signature(jws, key)
    return strict_json_object(jws.payload_bytes, errors=jws.errors, what="payload")


def sign_compact(header: Mapping[str, Any], payload: Mapping[str, Any], key: PrivateKey, *,
                 canonical: bool = False) -> str:
    """A compact JWS; ``alg`` is set from the key type (callers cannot mislabel it).

    ``canonical`` serialises header and payload as RFC 8785 JSON (attestation results, whose
    bytes are pinned by known-answer vectors); otherwise compact JSON in the given order.
    """
    alg = algorithm_for(key)
    full_header = {**header, "alg": alg}
    encode = canonical_json if canonical else compact_json
    data = f"{b64url_encode(encode(full_header))}.{b64url_encode(encode(payload))}".encode("ascii")
    if isinstance(key, Ed25519PrivateKey):
        sig = key.sign(data)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return f"{data.decode('ascii')}.{b64url_encode(sig)}"


# --- JWK -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jwk:
    """A public verification key, with the one algorithm it may be used with."""

    key: PublicKey
    algorithm: str  # the one JWS alg this key type serves
    kid: str | None
    thumbprint: str  # RFC 7638 SHA-256 thumbprint, base64url

    @classmethod
    def of(cls, key: PublicKey, *, kid: str | None = None) -> Jwk:
        """A key the caller holds already (a pinned verifier key), not read from a JWK."""
        return cls(key=key, algorithm=algorithm_for(key), kid=kid, thumbprint=jwk_thumbprint(key))

    def to_public_dict(self) -> dict[str, str]:
        out = public_jwk_members(self.key)
        if self.kid is not None:
            out["kid"] = self.kid
        out["alg"] = self.algorithm
        out["use"] = "sig"
        return out


def _field(obj: Mapping[str, Any], name: str, errors: JoseErrors) -> bytes:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > MAX_JWK_FIELD:
        raise errors("key", f"JWK member {name!r} is missing or too long")
    return b64url_decode(value, errors=errors, kind="key", what=f"JWK member {name!r}")


def parse_jwk(obj: Any, *, errors: JoseErrors, allow_private: bool = False) -> Jwk:
    """A public key from one JWK; raises ``errors``' key refusal when unusable.

    A JWK carrying private members is refused (a JWKS or a DPoP header must hold public keys
    only, RFC 9449 §4.3 check 7), unless ``allow_private`` for reading our own signing key.
    """
    if not isinstance(obj, Mapping):
        raise errors("key", "a JWK is not an object")
    if not allow_private and PRIVATE_MEMBERS & set(obj):
        raise errors("key", "the JWK holds private key material")
    kty = obj.get("kty")
    key: PublicKey
    try:
        if kty == "OKP":
            if obj.get("crv") != "Ed25519":
                raise errors("key", "only the Ed25519 OKP curve is supported")
            x = _field(obj, "x", errors)
            if len(x) != 32:
                raise errors("key", "an Ed25519 key is 32 bytes")
            key, alg = Ed25519PublicKey.from_public_bytes(x), "EdDSA"
        elif kty == "EC":
            if obj.get("crv") != "P-256":
                raise errors("key", "only the P-256 EC curve is supported")
            x, y = _field(obj, "x", errors), _field(obj, "y", errors)
            if len(x) != 32 or len(y) != 32:
                raise errors("key", "P-256 coordinates are 32 bytes each")
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            )
            key, alg = numbers.public_key(), "ES256"  # raises ValueError if off the curve
        elif kty == "RSA":
            n, e = _field(obj, "n", errors), _field(obj, "e", errors)
            modulus, exponent = int.from_bytes(n, "big"), int.from_bytes(e, "big")
            if not MIN_RSA_BITS <= modulus.bit_length() <= MAX_RSA_BITS:
                raise errors("key", "RSA keys must be 2048 to 8192 bits")
            if exponent < 3 or exponent % 2 == 0 or exponent.bit_length() > 32:
                raise errors("key", "the RSA public exponent is unacceptable")
            key, alg = rsa.RSAPublicNumbers(exponent, modulus).public_key(), "RS256"
        else:
            raise errors("key", f"key type {str(kty)[:16]!r} is not supported")
    except ValueError as exc:
        raise errors("key", f"the JWK is not a valid public key: {exc}") from exc
    declared = obj.get("alg")
    if declared is not None and declared != alg:
        raise errors("key", f"the JWK is declared for {str(declared)[:16]!r}")
    use = obj.get("use")
    if use is not None and use != "sig":
        raise errors("key", "the JWK is not a signing key")
    ops = obj.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise errors("key", "the JWK's key_ops do not include 'verify'")
    kid = obj.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 256):
        raise errors("key", "the JWK 'kid' must be a short string")
    return Jwk(key=key, algorithm=alg, kid=kid, thumbprint=jwk_thumbprint(key))


def public_jwk_members(key: PublicKey) -> dict[str, str]:
    """The required public members of a key's JWK, the input of an RFC 7638 thumbprint."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise CryptoError("crypto.bad_key", "only P-256 EC keys are supported")
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
    raise CryptoError("crypto.bad_key", "unsupported key type")


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, without whitespace."""
    members = public_jwk_members(key)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    """The one JWS algorithm a key type serves (RFC 8725 §3.1)."""
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise CryptoError("crypto.bad_key", "only P-256 EC keys are supported")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256"
    raise CryptoError("crypto.bad_key", "unsupported key type")
