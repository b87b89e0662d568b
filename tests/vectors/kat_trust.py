"""Vectors for continuous trust: the release log's signed entry (audit/release.py) and the key
broker's signed standing answer (kbs/signing.py), each computed here from its written
definition with hashlib and cryptography's Ed25519, then compared with the library."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.vectors._kat import GENERATOR, NONCE_32, Vector, agree, vector

SIGNER_SEED = bytes.fromhex("3c1f0e3d5a8b9c7d6e5f4a3b2c1d0e0f1a2b3c4d5e6f708192a3b4c5d6e7f809")
BROKER_SEED = bytes.fromhex("8e2a1c9b7d5f3e1a0c2b4d6f8e0a1c3b5d7f9e1a3c5b7d9f0e2a4c6b8d0f1e3a")
MEASUREMENT = hashlib.sha384(b"medclave kat release measurement").hexdigest()
MODEL = hashlib.sha256(b"medclave kat model").hexdigest()


def _raw_public(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def _vkey(name: str, seed: bytes) -> str:
    # C2SP signed-note: name + "+" + hex(key id) + "+" + base64(0x01 || public key), key id =
    # SHA-256(name || "\n" || 0x01 || public key)[:4].
    public = _raw_public(seed)
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    encoded = base64.b64encode(bytes((1,)) + public).decode()
    return f"{name}+{key_id.hex()}+{encoded}"


@vector("release_entry.json")
def release_entry() -> Vector:
    from medclave.audit.note import NoteSigner
    from medclave.audit.release import ReleaseStatement, signed_entry

    # The statement's canonical JSON, written out by hand (RFC 8785: keys sorted, no spaces).
    statement_json = (
        '{"engine_builds":["llama.cpp-b4500-cpu"],'
        f'"measurements":{{"sev-snp":["{MEASUREMENT}"]}},'
        f'"model_digests":["{MODEL}"],"provenance":{{}},"release":"0.1.0",'
        '"type":"medclave-release/v1"}')
    signed = b"medclave-release-v1\n" + statement_json.encode()
    signature = Ed25519PrivateKey.from_private_bytes(SIGNER_SEED).sign(signed)
    vkey = _vkey("release-signer", SIGNER_SEED)
    leaf = (f'{{"signature":"{base64.b64encode(signature).decode()}",'
            f'"signer":"{vkey}","statement":{statement_json}}}').encode()
    statement = ReleaseStatement(release="0.1.0", measurements={"sev-snp": (MEASUREMENT,)},
                                 model_digests=(MODEL,), engine_builds=("llama.cpp-b4500-cpu",))
    agree("release entry leaf", leaf,
          signed_entry(statement, NoteSigner.from_seed("release-signer", SIGNER_SEED)))
    return {
        "description": "A release-log leaf: RFC 8785 JSON of {statement, signer (note vkey), "
                       "signature (Ed25519 over 'medclave-release-v1\\n' || canonical "
                       "statement)}; Merkle leaf hash SHA-256(0x00 || leaf)",
        "generator": GENERATOR,
        "cases": [{"name": "release_0_1_0", "signer_seed_hex": SIGNER_SEED.hex(),
                   "signer_vkey": vkey, "leaf": leaf.decode(),
                   "leaf_hash_hex": hashlib.sha256(b"\x00" + leaf).hexdigest()}],
    }


@vector("kbs_standing.json")
def kbs_standing() -> Vector:
    from medclave.kbs.signing import standing_statement

    evidence = hashlib.sha256(b"medclave kat evidence bundle").hexdigest()
    cases = []
    for standing in ("good", "revoked"):
        text = ('{"evidence":"' + evidence + '","nonce":"' + NONCE_32.hex() + '",'
                '"resource":"kbs:///vendor/model-key/llama","standing":"' + standing + '",'
                '"type":"medclave-kbs-standing/v1"}').encode()
        agree(f"standing {standing}", text, standing_statement(
            resource="kbs:///vendor/model-key/llama", nonce=NONCE_32, evidence=evidence,
            standing=standing))
        signature = Ed25519PrivateKey.from_private_bytes(BROKER_SEED).sign(text)
        cases.append({"name": standing, "statement": text.decode(),
                      "broker_public_key_hex": _raw_public(BROKER_SEED).hex(),
                      "broker_key_id": hashlib.sha256(_raw_public(BROKER_SEED)).hexdigest(),
                      "signature_b64": base64.b64encode(signature).decode()})
    return {
        "description": "The broker's standing answer: RFC 8785 JSON statement signed Ed25519 "
                       "by the broker key (key id: SHA-256 of the raw public key)",
        "generator": GENERATOR,
        "cases": cases,
    }
