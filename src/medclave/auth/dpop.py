"""DPoP proofs (RFC 9449): sender-constrained tokens, checked when the token says so.

A DPoP-bound access token carries ``cnf.jkt``, the thumbprint of the client's key (§6.1). Each
request then carries a proof JWT signed by that key over the method and URL (§4.2). We check,
following §4.3: one well-formed JWS with ``typ: dpop+jwt``; an allowed asymmetric ``alg``; a
public ``jwk`` in the header that verifies the signature; ``htm`` and ``htu`` equal to this
request (URL compared without query and fragment, after syntax-based normalization, §4.3
check 9); ``iat`` within a window; ``jti`` unseen; ``ath`` the hash of the presented access
token (§4.3 check 12); the key's thumbprint equal to ``cnf.jkt`` (§4.3 check 12). Every failure
is ``auth.dpop_invalid`` with a detail saying which check failed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from medclave.auth.jwks import AUTH_JOSE_ERRORS
from medclave.auth.replay import ReplayCache
from medclave.crypto.jose import (
    SUPPORTED_ALGORITHMS,
    PrivateKey,
    b64url_encode,
    parse_compact,
    parse_jwk,
    public_jwk_members,
    sign_compact,
    verified_claims,
)
from medclave.errors import AuthError, InputError

MAX_PROOF_LENGTH: Final = 4096
MAX_URL_LENGTH: Final = 2048
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, kw_only=True)
class DpopOptions:
    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS
    max_age: timedelta = timedelta(minutes=5)  # how old a proof's iat may be
    clock_skew: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if not self.algorithms or not self.algorithms <= SUPPORTED_ALGORITHMS:
            raise InputError("config.invalid", "DPoP algorithms must be among ES256, EdDSA, RS256")
        if not timedelta(0) < self.max_age <= timedelta(minutes=15):
            raise InputError("config.invalid", "DPoP max_age must be within 15 minutes")


@dataclass(frozen=True)
class DpopProof:
    jkt: str  # RFC 7638 thumbprint of the proof key
    jti: str
    issued_at: datetime


def normalize_htu(url: str) -> str:
    """RFC 9449 §4.3 check 9 / RFC 3986 §6.2.2-6.2.3: scheme and host lower-cased, default port
    dropped, empty path as ``/``, query and fragment removed. Raises ``auth.dpop_invalid``."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise AuthError("auth.dpop_invalid", "the URL is missing or too long")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AuthError("auth.dpop_invalid", f"the URL is invalid: {exc}") from exc
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        raise AuthError("auth.dpop_invalid", "the URL must be http(s) with a host, no userinfo")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def access_token_hash(access_token: str) -> str:
    """§4.2 ``ath``: base64url SHA-256 of the ASCII access token."""
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def verify_dpop_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: datetime,
    access_token: str | None,
    expected_jkt: str | None,
    replay: ReplayCache,
    options: DpopOptions = DpopOptions(),
    nonce: str | None = None,
) -> DpopProof:
    """Check one DPoP proof for this request; raise ``auth.dpop_invalid`` on any failure."""
    if now.tzinfo is None:
        raise InputError("config.invalid", "verification time must be timezone-aware")
    try:
        jws = parse_compact(proof, algorithms=options.algorithms, errors=AUTH_JOSE_ERRORS,
                            max_length=MAX_PROOF_LENGTH)
    except AuthError as exc:
        raise AuthError("auth.dpop_invalid", f"proof: {exc.detail}") from exc
    if jws.header.get("typ") != "dpop+jwt":
        raise AuthError("auth.dpop_invalid", "the proof's typ is not 'dpop+jwt'")
    try:
        key = parse_jwk(jws.header.get("jwk"), errors=AUTH_JOSE_ERRORS)
        # The proof's claims are parsed only once its signature verified (the key is in the
        # header, so nothing in the payload is needed to choose it).
        claims = verified_claims(jws, key)
    except AuthError as exc:
        raise AuthError("auth.dpop_invalid", f"proof key or signature: {exc.detail}") from exc

    htm, htu, jti = claims.get("htm"), claims.get("htu"), claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise AuthError("auth.dpop_invalid", "the proof has no valid 'jti'")
    if not isinstance(htm, str) or htm != method:
        raise AuthError("auth.dpop_invalid", "the proof is for another HTTP method")
    if not isinstance(htu, str) or normalize_htu(htu) != normalize_htu(url):
        raise AuthError("auth.dpop_invalid", "the proof is for another URL")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not 0 <= iat < 2**40:
        raise AuthError("auth.dpop_invalid", "the proof has no valid 'iat'")
    issued = datetime.fromtimestamp(iat, tz=UTC)
    if issued > now + options.clock_skew:
        raise AuthError("auth.dpop_invalid", "the proof is issued in the future")
    if issued < now - options.max_age - options.clock_skew:
        raise AuthError("auth.dpop_invalid", "the proof is too old")
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(
            ath.encode(), access_token_hash(access_token).encode()
        ):
            raise AuthError("auth.dpop_invalid", "the proof is not for this access token (ath)")
    if nonce is not None and claims.get("nonce") != nonce:
        raise AuthError("auth.dpop_invalid", "the proof does not carry the server's nonce")
    if expected_jkt is not None and not hmac.compare_digest(key.thumbprint.encode(), expected_jkt.encode()):
        raise AuthError("auth.dpop_invalid", "the proof is signed by another key than the token's")
    expires = issued + options.max_age + 2 * options.clock_skew
    if not replay.add(f"dpop\x00{key.thumbprint}\x00{jti}", expires_at=expires, now=now):
        raise AuthError("auth.dpop_invalid", "the proof was already used (jti replay)")
    return DpopProof(jkt=key.thumbprint, jti=jti, issued_at=issued)


def create_dpop_proof(
    key: PrivateKey,
    *,
    method: str,
    url: str,
    now: datetime,
    access_token: str | None = None,
    nonce: str | None = None,
    jti: str | None = None,
) -> str:
    """The client side of §4.2, for the SDK, the dev IdP's tests and ``curl``-style tools."""
    header = {"typ": "dpop+jwt", "jwk": public_jwk_members(key.public_key())}
    claims: dict[str, object] = {
        "jti": jti or str(uuid.UUID(bytes=secrets.token_bytes(16), version=4)),
        "htm": method,
        "htu": url,
        "iat": int(now.timestamp()),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    return sign_compact(header, claims, key)
