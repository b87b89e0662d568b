"""Keys, token minting and a world of entities shared by the auth tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medclave.auth.jwks import StaticJwks
from medclave.crypto.jose import PrivateKey, b64url_encode, jwk_thumbprint, public_jwk_members, sign_compact

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://idp.st-mary.example"
AUDIENCE = "medclave"


@cache
def ed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def kid(key: PrivateKey) -> str:
    return jwk_thumbprint(key.public_key())


def jwks_doc(*keys: PrivateKey) -> dict[str, Any]:
    return {"keys": [{**public_jwk_members(k.public_key()), "kid": kid(k)} for k in keys]}


def jwks(*keys: PrivateKey) -> StaticJwks:
    return StaticJwks.from_document(jwks_doc(*keys))


def claims(**over: Any) -> dict[str, Any]:
    iat = int(NOW.timestamp())
    out: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "dr-alice",
        "aud": AUDIENCE,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 300,
        "jti": f"jti-{over.pop('n', 0)}",
        "tenant": "st-mary",
        "roles": ["clinician"],
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not None}


def mint(key: PrivateKey | None = None, header: Mapping[str, Any] | None = None, **over: Any) -> str:
    key = key or ed_key()
    h = {"typ": "at+jwt", "kid": kid(key), **(header or {})}
    return sign_compact(h, claims(**over), key)


def raw_jws(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes) -> str:
    """A token with any header at all (forged tokens: alg none, HS256, ...)."""
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps(payload).encode())
    return f"{h}.{p}.{b64url_encode(signature)}"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)
