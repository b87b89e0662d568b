"""Google Confidential Space attestation tokens (the registry's ``gcp-cs`` platform).

The token is an OIDC JWT (RS256) that Google's attestation service issues to a workload after
verifying its vTPM and hardware evidence (Confidential Space docs, "Token claims"). It is read
with Medclave's one strict JOSE reader (:mod:`medclave.crypto.jose`); the checks:

0. a compact JWS with ``alg`` RS256 and a ``kid`` (anything else ends before a key is chosen);
1. the key with that ``kid`` in a JWKS the relying party supplied (``--cert jwks.json``): a JWKS
   carries no chain, so the relying party's copy of Google's key set IS the trust anchor
   (``Endorsements.keys``; an evidence bundle cannot add one); without one, the explicit online
   provider (``--online``) fetches Google's over TLS;
2. the signature, and only then the claims (strict JSON);
3. ``iss`` is Google's attestation service, ``aud`` is present (which audience a relying party
   accepts is a reference value: ``[platform.gcp-cs.reference_values] aud = [...]``);
4. ``nbf <= now < exp`` and ``iat <= now`` at the injected time (no leeway: the time is the
   caller's);
5. with an expected nonce, it is one of the ``eat_nonce`` values (hex), or their concatenation.

Claims for the policy: ``hwmodel`` (GCP_AMD_SEV, GCP_INTEL_TDX, ...), ``dbgstat`` (``debug`` is
true unless it is "disabled-since-boot"), ``swname``, ``swversion``, ``support_attributes``,
the container's ``image_digest`` and ``image_reference``, ``secboot``. The TCB status is read
from ``support_attributes`` (the image's support state): LATEST -> UpToDate; STABLE or USABLE
without LATEST -> SWHardeningNeeded (a newer image exists, this one is still supported); none
(debug images carry none) -> OutOfDate. The Medclave binding travels as two ``eat_nonce``
values of 64 hex characters each (Confidential Space bounds each nonce to 74 bytes), whose
concatenation is ``report_data``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from medclave.attestation.core import (
    ATTESTATION_JOSE_ERRORS,
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    sha256_hex,
)
from medclave.attestation.providers import JwksSource
from medclave.crypto import jose
from medclave.errors import AttestationError
from medclave.util.lru import Lru

PLATFORM = "gcp-cs"
ISSUER = "https://confidentialcomputing.googleapis.com"
MAX_TOKEN = 16 * 1024
MAX_JWKS_BYTES = 64 * 1024
MAX_JWKS_KEYS = 16
_JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
_HEX = re.compile(r"[0-9a-fA-F]+\Z")
_ERR = ATTESTATION_JOSE_ERRORS


def _token(data: bytes) -> jose.CompactJws:
    text = data.strip()
    if len(text) > MAX_TOKEN or not _JWT_SHAPE.match(text):
        raise AttestationError("attestation.malformed", "not a compact JWT")
    return jose.parse_compact(text.decode("ascii"), algorithms=frozenset({"RS256"}), errors=_ERR,
                              max_length=MAX_TOKEN)


def looks_like_token(data: bytes) -> bool:
    """A JWT whose (unverified) issuer is Google's attestation service."""
    if not data.lstrip().startswith(b"eyJ"):
        return False
    try:
        return _token(data).unverified_claims().get("iss") == ISSUER
    except AttestationError:
        return False


# Parsed key sets by SHA-256 of their bytes: a relying party passes the same JWKS every time.
_JWKS: Lru[str, tuple[tuple[str, jose.Jwk], ...]] = Lru(32)


def _keys(options: VerifyOptions) -> dict[str, jose.Jwk]:
    keys: dict[str, jose.Jwk] = {}
    for blob in options.endorsements.keys:
        if len(blob) > MAX_JWKS_BYTES or blob.lstrip()[:1] != b"{":
            continue
        digest = sha256_hex(blob)
        cached = _JWKS.get(digest)
        if cached is None:
            cached = tuple(_jwks(blob).items())
            _JWKS.put(digest, cached)
        keys.update(cached)
    return keys


def clear_cache() -> None:
    _JWKS.clear()


def _jwks(blob: bytes) -> dict[str, jose.Jwk]:
    keys: dict[str, jose.Jwk] = {}
    doc = jose.strict_json_object(blob, errors=_ERR, what="JWKS")
    entries = doc.get("keys")
    if not isinstance(entries, list):
        return keys  # another kind of key file (a CPAK JWK, say)
    if len(entries) > MAX_JWKS_KEYS:
        raise AttestationError("attestation.malformed", f"JWKS has over {MAX_JWKS_KEYS} keys")
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("kty") == "RSA":
            key = jose.parse_jwk(entry, errors=_ERR)
            if key.kid is not None:
                keys[key.kid] = key
    return keys


def _time(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims.get(name)
    if type(value) is not int or not 0 < value < 1 << 40:
        raise AttestationError("attestation.malformed", f"claim {name!r} is not a NumericDate")
    return datetime.fromtimestamp(value, UTC)


def _nonces(claims: Mapping[str, Any]) -> list[str]:
    value = claims.get("eat_nonce")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > 6 or not all(isinstance(v, str) and len(v) <= 74 for v in items):
        raise AttestationError("attestation.malformed", "eat_nonce is not up to 6 short strings")
    return list(items)


def _tcb_status(attributes: list[str]) -> str:
    if "LATEST" in attributes:
        return "UpToDate"
    if "STABLE" in attributes or "USABLE" in attributes:
        return "SWHardeningNeeded"
    return "OutOfDate"


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def claims_of(claims: Mapping[str, Any]) -> dict[str, Any]:
    submods = _map(claims.get("submods"))
    cs, container, gce = (_map(submods.get(k)) for k in ("confidential_space", "container", "gce"))
    attributes = cs.get("support_attributes")
    attributes = [a for a in attributes if isinstance(a, str)] if isinstance(attributes,
                                                                             list) else []
    nonces = _nonces(claims)
    joined = "".join(nonces)
    binding = joined.lower() if len(joined) == 128 and _HEX.match(joined) else ""
    return {
        "iss": claims.get("iss"),
        "aud": claims.get("aud"),
        "sub": claims.get("sub"),
        "iat": claims.get("iat"),
        "nbf": claims.get("nbf"),
        "exp": claims.get("exp"),
        "eat_nonce": nonces,
        "eat_profile": claims.get("eat_profile"),
        "hwmodel": claims.get("hwmodel"),
        "swname": claims.get("swname"),
        "swversion": claims.get("swversion"),
        "dbgstat": claims.get("dbgstat"),
        "debug": claims.get("dbgstat") != "disabled-since-boot",
        "secboot": claims.get("secboot"),
        "oemid": claims.get("oemid"),
        "support_attributes": attributes,
        "image_digest": container.get("image_digest"),
        "image_reference": container.get("image_reference"),
        "restart_policy": container.get("restart_policy"),
        "gce": {k: v for k, v in gce.items() if isinstance(v, str)},
        "report_data": binding,
    }


def parse(data: bytes) -> Claims:
    """The token's claims, signature NOT checked (for inspection only)."""
    return claims_of(_token(data).unverified_claims())


def signed_bytes(data: bytes) -> bytes:
    """The JWS signing input (header.payload): RS256 (PKCS#1 v1.5) is not malleable, but the
    signature bytes are still not what identifies the token."""
    return _token(data).signing_input


def verify(data: bytes, options: VerifyOptions) -> Verification:
    log = CheckLog()
    try:
        jws = _token(data)
    except AttestationError as exc:
        raise log.fail("0. parse token", exc.code, exc.detail) from exc
    if jws.kid is None:
        raise log.fail("0. parse token", "attestation.malformed", "the token names no kid")
    log.ok("0. parse token", f"JWT RS256, kid {jws.kid[:16]}")
    try:
        keys = _keys(options)
        if not keys and isinstance(options.online, JwksSource):
            blob = options.online.confidential_space_jwks()
            if not isinstance(blob, bytes) or len(blob) > MAX_JWKS_BYTES:
                raise AttestationError("attestation.provider_offline", "no JWKS fetched")
            keys = _jwks(blob)
            log.ok("1. signing key", "Google's JWKS fetched by the online provider")
    except AttestationError as exc:
        raise log.fail("1. signing key", exc.code, exc.detail) from exc
    if not keys:
        raise log.fail("1. signing key", "attestation.certificate_missing",
                       "no JWKS given: pass Google's Confidential Space key set with --cert "
                       "(or --online to fetch it)")
    key = keys.get(jws.kid)
    if key is None:
        raise log.fail("1. signing key", "attestation.root_untrusted",
                       f"kid {jws.kid[:16]} is not in the supplied JWKS")
    log.ok("1. signing key", f"RSA key {key.kid} from the supplied JWKS")
    try:
        claims = jose.verified_claims(jws, key)
    except AttestationError as exc:
        raise log.fail("2. signature", exc.code, exc.detail) from exc
    log.ok("2. signature", "RS256 by the JWKS key")
    if claims.get("iss") != ISSUER:
        raise log.fail("3. issuer", "attestation.signature_invalid",
                       f"iss {str(claims.get('iss'))[:64]!r} is not {ISSUER}")
    aud = claims.get("aud")
    if not (isinstance(aud, str) and aud) and not (isinstance(aud, list) and aud):
        raise log.fail("3. issuer", "attestation.malformed", "the token has no audience")
    log.ok("3. issuer", f"iss {ISSUER}, aud {json.dumps(aud)[:64]}")
    try:
        nbf, exp = _time(claims, "nbf"), _time(claims, "exp")
        iat = _time(claims, "iat")
    except AttestationError as exc:
        raise log.fail("4. validity", exc.code, exc.detail) from exc
    now = options.now
    if not (nbf <= now < exp and iat <= now):
        raise log.fail("4. validity", "attestation.evidence_expired",
                       f"valid {nbf:%Y-%m-%dT%H:%M:%S}Z..{exp:%Y-%m-%dT%H:%M:%S}Z, "
                       f"not at {now:%Y-%m-%dT%H:%M:%S}Z")
    log.ok("4. validity", f"{nbf:%Y-%m-%dT%H:%M:%S}Z..{exp:%Y-%m-%dT%H:%M:%S}Z")
    try:
        out = claims_of(claims)
    except AttestationError as exc:
        raise log.fail("5. nonce", exc.code, exc.detail) from exc
    if options.expected_nonce is not None:
        want = options.expected_nonce.hex()
        nonces = [n.lower() for n in out["eat_nonce"]]
        if not any(hmac.compare_digest(want, n) for n in [*nonces, "".join(nonces)]):
            raise log.fail("5. nonce", "attestation.nonce_mismatch",
                           "no eat_nonce is the expected nonce")
        log.ok("5. nonce", "eat_nonce carries the expected nonce")
    return Verification(
        platform=PLATFORM,
        claims=out,
        checks=log.checks,
        tcb_status=_tcb_status(out["support_attributes"]),
        # The JWKS is the relying party's own anchor (module docstring): what it names, it trusts.
        secure=True,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(jws.signing_input),
    )
