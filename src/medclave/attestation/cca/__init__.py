"""Arm CCA (the registry's ``cca`` platform): CCA attestation tokens of a realm and its platform.

``abi`` reads the token (see there for the layout and claim keys); the checks here, as in
Veraison's ``ccatoken`` and the Confidential Containers verifier:

0. the token parses (tag 399, two bstr-wrapped COSE_Sign1, every claim typed and bounded);
1. the CPAK (CCA Platform Attestation Key) comes from an endorsement the relying party gives,
   never from the token: a PEM public key, a JWK, or a Confidential Containers ``tastore.json``
   whose entry names this platform's instance id (``Endorsements.keys``, ``--cert``);
2. the platform token's signature by the CPAK (ES384 for P-384, ES256 for P-256);
3. the realm token's signature by the RAK it carries (ES384, P-384);
4. the binding: the platform challenge is the hash (the realm's RAK hash algorithm) of the RAK
   claim's bytes, so the platform vouches for exactly this realm's key;
5. with reference values (an ``rvstore.json``-style file in ``--collateral``): the platform's
   implementation id, configuration and every software component (type, measurement, signer),
   and the realm's initial measurement, extensible measurements and personalization value, all
   equal to one reference entry; reference values may also come from the policy
   (``[platform.cca.reference_values]`` over the claim paths, e.g. ``realm.initial_measurement``);
6. with an expected nonce, the realm challenge is that nonce (zero-padded to 64 bytes).

A token signed by a CPAK whose private half is public (Arm's FVP test key, below) verifies but
proves nothing about silicon: it is marked ``secure: false`` with a warning, as sim is.
``debug`` is true unless the platform lifecycle is "secured" (PSA lifecycle 0x30xx).
The realm challenge carries the Medclave binding in an evidence bundle (``report_data``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.attestation import cose
from medclave.attestation.cca import abi
from medclave.attestation.core import (
    ATTESTATION_JOSE_ERRORS,
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    require_size,
    sha256_hex,
)
from medclave.crypto import jose
from medclave.errors import AttestationError

PLATFORM = "cca"
# SHA-256 of the SubjectPublicKeyInfo DER of CPAKs whose private key is published: Arm's FVP /
# TF-RMM reference CPAK (P-384, x = IShnxS4rlQiwpCCp...; its private half ships with trustee's
# test kit, cca/misc/cpak-priv.json).
KNOWN_TEST_KEYS: Mapping[str, str] = {
    "0928f896cb02326566530a62a1e36329a12d0a4a308f4fc81e8ff5560bca6bca":
        "Arm's public FVP test CPAK",
}
MAX_KEY_FILE = 64 * 1024
MAX_KEYS = 32
_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_ALG_FOR_CURVE = {"secp256r1": cose.ES256, "secp384r1": cose.ES384}

__all__ = ["KNOWN_TEST_KEYS", "PLATFORM", "detect", "parse", "signed_bytes", "verify"]


def detect(data: bytes) -> str | None:
    if not abi.looks_like_token(data):
        return None
    try:
        abi.parse_token(data)
    except AttestationError:
        return None
    return PLATFORM


def _claims(token: abi.Token) -> dict[str, Any]:
    platform, realm = token.platform_claims, token.realm_claims
    return {
        "profile": platform["profile"],
        "platform": platform,
        "realm": realm,
        "debug": platform["lifecycle_state"] != "secured",
        "report_data": realm["challenge"],
    }


def parse(data: bytes) -> Claims:
    require_size(data, maximum=abi.MAX_TOKEN_BYTES)
    return _claims(abi.parse_token(data))


def signed_bytes(data: bytes) -> bytes:
    require_size(data, maximum=abi.MAX_TOKEN_BYTES)
    return abi.parse_token(data).signed()


# --- endorsements: the CPAK and reference values ------------------------------------------------


def _jwk_key(obj: Any) -> ec.EllipticCurvePublicKey:
    if not isinstance(obj, Mapping) or obj.get("kty") != "EC" or obj.get("crv") not in _CURVES:
        raise AttestationError("attestation.malformed", "the CPAK JWK is not an EC P-256/P-384 key")
    if jose.PRIVATE_MEMBERS & set(obj):
        raise AttestationError("attestation.malformed", "the CPAK JWK holds private key material")
    curve = _CURVES[str(obj["crv"])]
    x, y = (obj.get(c) for c in ("x", "y"))
    if not isinstance(x, str) or not isinstance(y, str) or len(x) > 128 or len(y) > 128:
        raise AttestationError("attestation.malformed", "the CPAK JWK has no x/y")
    xb = jose.b64url_decode(x, errors=ATTESTATION_JOSE_ERRORS, what="x")
    yb = jose.b64url_decode(y, errors=ATTESTATION_JOSE_ERRORS, what="y")
    try:
        return ec.EllipticCurvePublicNumbers(int.from_bytes(xb, "big"), int.from_bytes(yb, "big"),
                                             curve).public_key()
    except ValueError as exc:
        raise AttestationError("attestation.malformed", "the CPAK is not on its curve") from exc


def _candidates(options: VerifyOptions, token: abi.Token) -> list[tuple[ec.EllipticCurvePublicKey,
                                                                          str]]:
    """Every CPAK the relying party gave that may be this platform's, with where it came from."""
    out: list[tuple[ec.EllipticCurvePublicKey, str]] = []
    platform = token.platform_claims
    for blob in options.endorsements.keys[:MAX_KEYS]:
        if len(blob) > MAX_KEY_FILE:
            raise AttestationError("attestation.malformed", "key file too large")
        if b"-----BEGIN PUBLIC KEY-----" in blob:
            try:
                key = serialization.load_pem_public_key(blob)
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise AttestationError("attestation.malformed", "unreadable PEM public key") from exc
            if isinstance(key, ec.EllipticCurvePublicKey):
                out.append((key, "PEM public key"))
            continue
        try:
            doc = json.loads(blob)
        except (ValueError, RecursionError) as exc:
            raise AttestationError("attestation.malformed", "key file is not JSON") from exc
        if isinstance(doc, dict) and doc.get("kty") == "EC":
            out.append((_jwk_key(doc), "JWK"))
        elif isinstance(doc, list):  # tastore.json: [{pkey, implementation-id, instance-id}]
            for entry in doc[:MAX_KEYS]:
                if (isinstance(entry, dict)
                        and entry.get("instance-id") == platform["instance_id"]
                        and entry.get("implementation-id") in (None, platform["implementation_id"])):
                    out.append((_jwk_key(entry.get("pkey")), "tastore entry for this instance id"))
    return out


def _spki_sha256(key: ec.EllipticCurvePublicKey) -> str:
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
                          ).hexdigest()


def _reference_values(options: VerifyOptions) -> list[Mapping[str, Any]]:
    stores: list[Mapping[str, Any]] = []
    for blob in options.endorsements.collateral:
        if blob.lstrip()[:1] != b"{" or len(blob) > 1 << 20:
            continue
        try:
            doc = json.loads(blob)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("platform"), list) and isinstance(
                doc.get("realm"), list):
            stores.append(doc)
    return stores


def _component_key(c: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return (c.get("component-type", c.get("type")),
            str(c.get("measurement-value", c.get("measurement", ""))).lower(),
            str(c.get("signer-id", c.get("signer_id", "")) or "").lower())


def _match_store(store: Mapping[str, Any], claims: Mapping[str, Any]) -> list[str]:
    """What differs from the store's best entries (empty: every reference value matched)."""
    platform, realm = claims["platform"], claims["realm"]
    problems: list[str] = []
    p_ok = False
    for entry in store["platform"]:
        if not isinstance(entry, dict) or entry.get("implementation-id") != platform[
                "implementation_id"]:
            continue
        comps = entry.get("sw-components")
        want = {_component_key(c) for c in comps if isinstance(c, dict)} if isinstance(
            comps, list) else set()
        have = {_component_key(c) for c in platform["sw_components"]}
        config_ok = str(entry.get("platform-configuration", "")).lower() == platform["config"]
        if want == have and config_ok:
            p_ok = True
            break
    if not p_ok:
        problems.append("platform: no reference entry with this implementation id, "
                        "configuration and software components")
    r_ok = any(
        isinstance(e, dict)
        and str(e.get("initial-measurement", "")).lower() == realm["initial_measurement"]
        and [str(x).lower() for x in e.get("extensible-measurements", [])]
        == realm["extensible_measurements"]
        and str(e.get("personalization-value", "")).lower() == realm["personalization_value"]
        and e.get("rak-hash-algorithm", realm["public_key_hash_algorithm"])
        == realm["public_key_hash_algorithm"]
        for e in store["realm"]
    )
    if not r_ok:
        problems.append("realm: no reference entry with this initial measurement, extensible "
                        "measurements and personalization value")
    return problems


# --- verification --------------------------------------------------------------------------------


def verify(data: bytes, options: VerifyOptions) -> Verification:
    log = CheckLog()
    try:
        require_size(data, maximum=abi.MAX_TOKEN_BYTES)
        token = abi.parse_token(data)
    except AttestationError as exc:
        raise log.fail("0. parse token", exc.code, exc.detail) from exc
    claims = _claims(token)
    log.ok("0. parse token", f"profile {claims['profile']}, "
                             f"{len(claims['platform']['sw_components'])} software components")
    try:
        candidates = _candidates(options, token)
    except AttestationError as exc:
        raise log.fail("1. platform key (CPAK)", exc.code, exc.detail) from exc
    if not candidates:
        raise log.fail("1. platform key (CPAK)", "attestation.certificate_missing",
                       "no CPAK endorsement for this platform: give its public key, JWK or "
                       "tastore.json with --cert")
    log.ok("1. platform key (CPAK)", f"{len(candidates)} candidate(s) from the endorsements")
    cpak = next((key for key, _ in candidates
                 if cose.signature_ok(token.platform, key,
                                      alg=_ALG_FOR_CURVE.get(key.curve.name, 0))), None)
    if cpak is None:
        raise log.fail("2. platform signature", "attestation.signature_invalid",
                       "the platform token is not signed by an endorsed CPAK")
    fp = _spki_sha256(cpak)
    log.ok("2. platform signature", f"COSE_Sign1 by CPAK {fp[:16]}…")
    try:
        rak = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), token.rak)
    except ValueError as exc:
        raise log.fail("3. realm signature", "attestation.signature_invalid",
                       "the RAK is not a P-384 point") from exc
    if not cose.signature_ok(token.realm, rak, alg=cose.ES384):
        raise log.fail("3. realm signature", "attestation.signature_invalid",
                       "the realm token is not signed by the RAK it carries")
    log.ok("3. realm signature", "COSE_Sign1 ES384 by the realm's RAK")
    alg = claims["realm"]["public_key_hash_algorithm"]
    expected = hashlib.new(alg.replace("-", ""), token.rak).digest()
    if not hmac.compare_digest(bytes.fromhex(claims["platform"]["challenge"]), expected):
        raise log.fail("4. platform-realm binding", "attestation.binding_mismatch",
                       f"the platform challenge is not {alg}(RAK)")
    log.ok("4. platform-realm binding", f"platform challenge = {alg}(RAK)")
    stores = _reference_values(options)
    if stores:
        problems = [p for store in stores for p in _match_store(store, claims)]
        if problems:
            raise log.fail("5. reference values", "attestation.measurement_mismatch",
                           "; ".join(problems))
        log.ok("5. reference values", "implementation id, configuration, software components, "
                                      "RIM, REMs and personalization value match")
    if options.expected_nonce is not None:
        want = options.expected_nonce.ljust(64, b"\0")
        if not hmac.compare_digest(bytes.fromhex(claims["realm"]["challenge"]), want):
            raise log.fail("6. nonce", "attestation.nonce_mismatch",
                           "the realm challenge is not the expected nonce")
        log.ok("6. nonce", "realm challenge = expected nonce")
    test_key = KNOWN_TEST_KEYS.get(fp)
    warnings = () if test_key is None else (
        f"signed by {test_key}, whose private key is public: this proves the token's format, "
        "not genuine hardware",)
    return Verification(
        platform=PLATFORM,
        claims=claims,
        checks=log.checks,
        secure=test_key is None,
        warnings=warnings,
        evidence_sha256=sha256_hex(data),
        evidence_digest=sha256_hex(token.signed()),
    )
