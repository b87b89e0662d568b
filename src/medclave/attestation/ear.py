"""Attestation results as EAR tokens (draft-ietf-rats-ear): a JWT, ES256, signed by the verifier.

Trustworthiness values follow the AR4SI tiers (draft-ietf-rats-ar4si §2.3): 0 no claim,
2 affirming, 32 warning, 96 contraindicated; ``ear.status`` is the worst tier of the vector.

Tokens are read by :mod:`medclave.crypto.jose`, the one strict JOSE implementation: a token with
a character outside base64url, or with non-canonical trailing bits, is ``attestation.malformed``
(it used to decode like its clean twin), and the claims are parsed only after the signature
verified. The ES256 signature is malleable (see ``crypto.jose``): identify an EAR by its claims,
never by a hash of the token text.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from medclave import __version__
from medclave.attestation.core import ATTESTATION_JOSE_ERRORS, Verification
from medclave.attestation.policy import Appraisal
from medclave.crypto.jose import (
    Jwk,
    b64url_encode,
    parse_compact,
    sign_compact,
    verified_claims,
)
from medclave.errors import AttestationError, CryptoError

# An EAR carries the whole appraisal (every claim of every submodule): larger than an access token.
MAX_EAR_LENGTH = 64 * 1024
# A malformed token is malformed; a token that is not signed by the pinned verifier key under
# ES256 (another alg, another key, a bad signature) is a signature refusal.
EAR_JOSE_ERRORS = ATTESTATION_JOSE_ERRORS
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
_TIER_VALUE = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
_VECTOR_KEYS = {  # appraisal status group -> AR4SI trustworthiness claim
    "hardware": "hardware",
    "configuration": "configuration",
    "executables": "executables",
    "tcb": "instance-identity",
    "sourced-data": "sourced-data",
}


def _tier(value: int) -> str:
    if value >= 96:
        return "contraindicated"
    if value >= 32:
        return "warning"
    return "affirming" if value >= 2 else "none"


def trustworthiness_vector(appraisal: Appraisal, verification: Verification) -> dict[str, int]:
    vector = {claim: _TIER_VALUE[appraisal.status.get(group, "none")]
              for group, claim in _VECTOR_KEYS.items()}
    if not verification.secure:
        vector["hardware"] = 97  # AR4SI: hardware not genuine (a software TEE)
    return vector


def issue_ear(
    verification: Verification,
    appraisal: Appraisal,
    *,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
    nonce: bytes | None = None,
    kid: str | None = None,
) -> str:
    vector = trustworthiness_vector(appraisal, verification)
    status = "contraindicated" if appraisal.violations else _tier(max(vector.values(), default=0))
    if status == "none":
        status = "affirming"
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": int(now.timestamp()),
        "ear.verifier-id": {"developer": "medclave", "build": f"medclave {__version__}"},
        "submods": {
            verification.platform: {
                "ear.status": status,
                "ear.trustworthiness-vector": vector,
                "ear.appraisal-policy-id": f"policy:{appraisal.policy_name}@sha256:{appraisal.policy_digest}",
                "medclave.claims": _json_claims(verification.claims),
                "medclave.tcb-status": verification.tcb_status,
                "medclave.violations": list(appraisal.violations),
                "medclave.secure": verification.secure,
            }
        },
    }
    if nonce is not None:
        claims["eat_nonce"] = b64url_encode(nonce)
    header: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return sign_compact(header, claims, key, canonical=True)


def verify_ear(token: str, *, key: ec.EllipticCurvePublicKey, now: datetime,
               max_age_seconds: int = 3600) -> Mapping[str, Any]:
    """The EAR claims if signed by ``key``, of our profile and fresh; raises otherwise."""
    try:
        verifier = Jwk.of(key)
    except CryptoError as exc:  # a verifier key of another curve can verify no ES256 token
        raise AttestationError("attestation.signature_invalid", f"EAR: {exc.detail}") from exc
    jws = parse_compact(token, algorithms=frozenset({"ES256"}), errors=EAR_JOSE_ERRORS,
                        max_length=MAX_EAR_LENGTH)
    claims = verified_claims(jws, verifier)
    iat = claims.get("iat")
    if claims.get("eat_profile") != EAR_PROFILE or not isinstance(iat, int):
        raise AttestationError("attestation.malformed", "not an EAR of the expected profile")
    age = now.timestamp() - iat
    if age > max_age_seconds or age < -60:
        raise AttestationError("attestation.malformed", f"EAR issued {age:.0f}s ago, outside its window")
    return claims


def _json_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in claims.items():
        out[k] = _json_claims(v) if isinstance(v, Mapping) else (v.hex() if isinstance(v, bytes) else v)
    return out
