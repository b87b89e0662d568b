"""Vectors for the attestation formats: report_data binding, GPU nonce, EAR tokens."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any
from unittest import mock

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.vectors._kat import (
    ENGINE_BUILD,
    GENERATOR,
    MODEL_DIGEST,
    NONCE_32,
    NONCE_64,
    POLICY_DIGEST,
    Vector,
    agree,
    b64url,
    sha256,
    vector,
)

OHTTP_PRIVATE = bytes.fromhex("6b1d381e6e5f262172c199c494613b97c0b0f3c0a05c9b12c52e4b7f00a0dd3f")
AUDIT_PRIVATE = bytes.fromhex("b8cec8913e6f95e1c8858d8ae92ab06b24792e9c851a209fa939f42b80cecc92")
EPHEMERAL_PRIVATE = bytes.fromhex("4ed6ae23ec50948a5456a965c4ae203497311b94addeb1acc95666fcc6766422")
EAR_VERSION = "0.1.0"  # the release named in the EAR payload's verifier build
EAR_KEY_SCALAR = bytes.fromhex("757e81ae23d0b208fb5fd515f72ba659629bf99d5ee90fcb06c875894bddaa63")

# ---------------------------------------------------------------------------------------------
# report_data binding and GPU nonce (attestation/binding.py; docs/architecture.md "Evidence bundle")

BINDING_LABEL = b"medclave-attest-v1"
GPU_LABEL = b"medclave-gpu-v1"


def _raw_x25519(private: bytes) -> bytes:
    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def _typical_runtime() -> tuple[dict[str, Any], str]:
    """What an enclave binds: RFC 9458 key config, model, engine, audit key, policy, KBS key."""
    # RFC 9458 §3: key_id 1, DHKEM(X25519, HKDF-SHA256) 0x0020, then HKDF-SHA256/AES-128-GCM.
    config = b"\x01\x00\x20" + _raw_x25519(OHTTP_PRIVATE) + b"\x00\x04\x00\x01\x00\x01"
    audit = ed25519.Ed25519PrivateKey.from_private_bytes(AUDIT_PRIVATE).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    values = {
        "ohttp_key_config": base64.b64encode(config).decode(),
        "model_digest": MODEL_DIGEST,
        "engine": "llama.cpp",
        "engine_build": ENGINE_BUILD,
        "audit_public_key": base64.b64encode(audit).decode(),
        "policy_digest": POLICY_DIGEST,
        "ephemeral_key": base64.b64encode(_raw_x25519(EPHEMERAL_PRIVATE)).decode(),
    }
    canonical = (  # keys sorted by hand
        f'{{"audit_public_key":"{values["audit_public_key"]}","engine":"llama.cpp",'
        f'"engine_build":"{ENGINE_BUILD}","ephemeral_key":"{values["ephemeral_key"]}",'
        f'"model_digest":"{MODEL_DIGEST}","ohttp_key_config":"{values["ohttp_key_config"]}",'
        f'"policy_digest":"{POLICY_DIGEST}"}}')
    return values, canonical


# RFC 8785 corner cases, keys deliberately out of order at every level: UTF-16 key order (§3.2.3,
# the example of its Appendix: the emoji's surrogates sort before U+FB33), ECMAScript number
# spelling (§3.2.2.3: 1e+21, 1e-7, -0 as 0, shortest round trip), string escapes (§3.2.2.2:
# only the short escapes and \u00XX for other controls; DEL, U+2028 and non-ASCII stay raw UTF-8).
EDGE_RUNTIME: dict[str, Any] = {
    "engine": "llama.cpp",
    "model_digest": MODEL_DIGEST,
    "site": {"ward": {"occupancy": 0.75, "beds": 12}, "name": "Hôpital Saint-Éloi — 東京 🏥"},
    "jcs_sort": {"\u20ac": "euro", "\r": "carriage return", "\ufb33": "dalet with dagesh",
                 "1": "one", "\U0001f600": "grinning face", "\u0080": "control",
                 "\u00f6": "o with diaeresis"},
    "numbers": [1.5, 1e21, 1e20, 1e-7, 1e-6, -0.0, 333333333.3333333, 5e-324,
                9007199254740991, -9007199254740991, 0.1 + 0.2],
    "escapes": "tab\t nl\n quote\" backslash\\ ctl\x0f slash/ del\x7f ls\u2028 é",
    "flags": [True, False, None],
    "empty": {"string": "", "array": [], "object": {}},
}
EDGE_CANONICAL = (
    '{"empty":{"array":[],"object":{},"string":""},'
    '"engine":"llama.cpp",'
    '"escapes":"tab\\t nl\\n quote\\" backslash\\\\ ctl\\u000f slash/ del\x7f ls\u2028 é",'
    '"flags":[true,false,null],'
    '"jcs_sort":{"\\r":"carriage return","1":"one","\u0080":"control","\u00f6":"o with diaeresis",'
    '"\u20ac":"euro","\U0001f600":"grinning face","\ufb33":"dalet with dagesh"},'
    f'"model_digest":"{MODEL_DIGEST}",'
    '"numbers":[1.5,1e+21,100000000000000000000,1e-7,0.000001,0,333333333.3333333,5e-324,'
    '9007199254740991,-9007199254740991,0.30000000000000004],'
    '"site":{"name":"Hôpital Saint-Éloi — 東京 🏥","ward":{"beds":12,"occupancy":0.75}}}'
)


def _binding_case(name: str, nonce: bytes, runtime: dict[str, Any], canonical_text: str) -> Vector:
    from medclave.attestation.binding import report_data_for
    from medclave.crypto.canonical import canonical_json

    canonical = canonical_text.encode("utf-8")
    agree(f"{name}: RFC 8785", canonical, bytes(rfc8785.dumps(runtime)))
    agree(f"{name}: canonical_json", canonical, canonical_json(runtime))
    report_data = hashlib.sha512(BINDING_LABEL + nonce + sha256(canonical)).digest()
    agree(f"{name}: report_data", report_data, report_data_for(nonce, runtime))
    return {
        "name": name,
        "nonce_hex": nonce.hex(),
        "runtime": runtime,
        "runtime_canonical_json": canonical_text,
        "runtime_canonical_json_hex": canonical.hex(),
        "runtime_sha256_hex": sha256(canonical).hex(),
        "report_data_hex": report_data.hex(),
    }


@vector("report_data.json")
def report_data_vectors() -> Vector:
    typical, typical_canonical = _typical_runtime()
    return {
        "description": "report_data binding v1: report_data = SHA-512(\"medclave-attest-v1\" || "
                       "nonce || SHA-256(RFC 8785 canonical JSON of runtime)). Spec: "
                       "docs/architecture.md 'Evidence bundle'; src/medclave/attestation/binding.py. "
                       "runtime_canonical_json is the intermediate the SHA-256 is taken over.",
        "generator": GENERATOR,
        "cases": [
            _binding_case("typical_runtime", NONCE_32, typical, typical_canonical),
            _binding_case("rfc8785_edge_cases", NONCE_64, EDGE_RUNTIME, EDGE_CANONICAL),
        ],
    }


@vector("gpu_nonce.json")
def gpu_nonce_vectors() -> Vector:
    from medclave.attestation.binding import gpu_nonce_for

    typical, typical_canonical = _typical_runtime()
    bound = bytes.fromhex(_binding_case("typical", NONCE_32, typical,
                                        typical_canonical)["report_data_hex"])
    cases = []
    for name, report_data in (("typical_runtime_report_data", bound),
                              ("counting_bytes", bytes(range(64)))):
        nonce = sha256(GPU_LABEL + report_data)
        agree(f"gpu nonce {name}", nonce, gpu_nonce_for(report_data))
        cases.append({"name": name, "report_data_hex": report_data.hex(),
                      "gpu_nonce_hex": nonce.hex()})
    return {
        "description": "GPU SPDM requester nonce v1: SHA-256(\"medclave-gpu-v1\" || report_data), "
                       "report_data exactly 64 bytes (DSP0274 1.1 §10.11.1 nonce of 32 bytes). "
                       "Spec: src/medclave/attestation/binding.py.",
        "generator": GENERATOR,
        "refused_report_data_lengths": [0, 32, 63, 65],
        "cases": cases,
    }



# ---------------------------------------------------------------------------------------------
# EAR attestation result (attestation/ear.py; draft-ietf-rats-ear, RFC 7515 compact JWS, ES256)

_EAR_CASES: list[dict[str, Any]] = [
    {"name": "sev_snp_warning_with_nonce_and_kid",
     "verification": {
         "platform": "sev-snp", "tcb_status": "up-to-date", "secure": True,
         # {"$hex": ...} stands for a bytes claim, which the token carries as lower hex.
         "claims": {"measurement": {"$hex": "41639847dda4ae48626801cc4f94313d628ebac9d24dafc9"
                                            "ea139555e6e7d660b787d3cffd60aa195b75dbde76383492"},
                    "policy": {"debug": False, "smt": True, "abi_major": 0},
                    "reported_tcb": {"bootloader": 3, "tee": 0, "snp": 22, "microcode": 213},
                    "platform_info": {"chip_id": {"$hex": (
                        "7e8f9070ab2111f30c70f0d3611b45580da0d158a258413d4fb0c19a8d4e5fe7"
                        "0dcbb61d4304a2a1cc7bcfb5016927ebcc61688dac266357d7288fc0af3f5771")}},
                    "guest_svn": 1, "vmpl": 0}},
     "appraisal": {"platform": "sev-snp", "policy_name": "snp-default",
                   "policy_digest": POLICY_DIGEST, "violations": [],
                   "status": {"hardware": "affirming", "configuration": "affirming",
                              "executables": "warning", "tcb": "affirming"}},
     "issued_at": "2026-03-01T09:00:00+00:00", "verify_at": "2026-03-01T09:10:00+00:00",
     "nonce_hex": NONCE_32.hex(), "kid": "medclave-verifier-2026-03",
     "vector": {"hardware": 2, "configuration": 2, "executables": 32, "instance-identity": 2,
                "sourced-data": 0},
     "status": "warning"},
    {"name": "sim_refused_no_nonce_no_kid",
     "verification": {"platform": "sim", "tcb_status": "unknown", "secure": False,
                      "claims": {}},
     "appraisal": {"platform": "sim", "policy_name": "default", "policy_digest": MODEL_DIGEST,
                   "violations": [{"code": "policy.platform_not_allowed", "claim": "platform",
                                   "detail": "sim is not allowed"}],
                   "status": {}},
     "issued_at": "2026-03-01T09:00:00+00:00", "verify_at": "2026-03-01T09:59:00+00:00",
     "nonce_hex": None, "kid": None,
     "vector": {"hardware": 97, "configuration": 0, "executables": 0, "instance-identity": 0,
                "sourced-data": 0},
     "status": "contraindicated"},
]


def _from_tagged(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return bytes.fromhex(value["$hex"])
        return {k: _from_tagged(v) for k, v in value.items()}
    return value


def _as_token_claims(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$hex"}:
            return value["$hex"]
        return {k: _as_token_claims(v) for k, v in value.items()}
    return value


def _ear_case(case: dict[str, Any], key: ec.EllipticCurvePrivateKey, version: str) -> Vector:
    from medclave.attestation.core import Verification
    from medclave.attestation.ear import issue_ear, verify_ear
    from medclave.attestation.policy import Appraisal

    name, ver, app = case["name"], case["verification"], case["appraisal"]
    issued = datetime.fromisoformat(case["issued_at"])
    header: dict[str, Any] = {"alg": "ES256", "typ": "JWT"}
    if case["kid"] is not None:
        header["kid"] = case["kid"]
    submod = {
        "ear.status": case["status"],
        "ear.trustworthiness-vector": case["vector"],
        "ear.appraisal-policy-id": f"policy:{app['policy_name']}@sha256:{app['policy_digest']}",
        "medclave.claims": _as_token_claims(ver["claims"]),
        "medclave.tcb-status": ver["tcb_status"],
        "medclave.violations": app["violations"],
        "medclave.secure": ver["secure"],
    }
    payload: dict[str, Any] = {
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "iat": int(issued.timestamp()),
        "ear.verifier-id": {"developer": "medclave", "build": f"medclave {version}"},
        "submods": {ver["platform"]: submod},
    }
    if case["nonce_hex"] is not None:
        payload["eat_nonce"] = b64url(bytes.fromhex(case["nonce_hex"]))
    header_json, payload_json = bytes(rfc8785.dumps(header)), bytes(rfc8785.dumps(payload))
    signing_input = f"{b64url(header_json)}.{b64url(payload_json)}"

    verification = Verification(platform=ver["platform"], claims=_from_tagged(ver["claims"]),
                                checks=(), tcb_status=ver["tcb_status"], secure=ver["secure"])
    appraisal = Appraisal(platform=app["platform"], policy_name=app["policy_name"],
                          policy_digest=app["policy_digest"],
                          violations=tuple(app["violations"]), status=app["status"])
    nonce = None if case["nonce_hex"] is None else bytes.fromhex(case["nonce_hex"])
    issued_token = issue_ear(verification, appraisal, key=key, now=issued, nonce=nonce,
                             kid=case["kid"])
    agree(f"{name}: signing input", signing_input, issued_token.rsplit(".", 1)[0])

    # ES256 signatures are randomized in the library; this one is RFC 6979's deterministic
    # ECDSA over the same signing input, so the committed token is reproducible and valid.
    der = key.sign(signing_input.encode("ascii"),
                   ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    token = f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    agree(f"{name}: verified claims", payload,
          dict(verify_ear(token, key=key.public_key(),
                          now=datetime.fromisoformat(case["verify_at"]))))
    return {
        "name": name,
        "inputs": {k: case[k] for k in ("verification", "appraisal", "issued_at", "nonce_hex",
                                        "kid")},
        "verify_at": case["verify_at"],
        "header": header,
        "header_json": header_json.decode("utf-8"),
        "header_b64url": b64url(header_json),
        "payload": payload,
        "payload_json": payload_json.decode("utf-8"),
        "payload_b64url": b64url(payload_json),
        "token": token,
    }


@vector("ear.json")
def ear_vectors() -> Vector:
    from medclave.attestation import ear

    key = ec.derive_private_key(int.from_bytes(EAR_KEY_SCALAR, "big"), ec.SECP256R1())
    public = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    # The payload names the release that issued it; a fixed one keeps the vector stable.
    with mock.patch.object(ear, "__version__", EAR_VERSION):
        cases = [_ear_case(case, key, EAR_VERSION) for case in _EAR_CASES]
    return {
        "description": "EAR attestation result v1 (src/medclave/attestation/ear.py; "
                       "draft-ietf-rats-ear, AR4SI tiers of draft-ietf-rats-ar4si §2.3): a "
                       "compact JWS (RFC 7515) signed ES256 (RFC 7518 §3.4, r || s), header and "
                       "payload as base64url (unpadded) of their RFC 8785 canonical JSON. ECDSA "
                       "is randomized, so only the header and payload segments are pinned on "
                       "issue; the committed token's signature is RFC 6979 deterministic ECDSA "
                       "and verifies with the committed public key. The payload names the "
                       "verifier build 'medclave <version>' of medclave_version. {\"$hex\": ...} "
                       "in the inputs stands for a bytes claim.",
        "generator": GENERATOR,
        "medclave_version": EAR_VERSION,
        "private_key_scalar_hex": EAR_KEY_SCALAR.hex(),
        "public_key_uncompressed_hex": public.hex(),
        "cases": cases,
    }


