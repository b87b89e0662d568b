"""Vectors for the audit entry: canonical bytes, commitments, pseudonyms, leaf hash."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import rfc8785

from tests.vectors._kat import (
    ENGINE_BUILD,
    EVIDENCE_DIGEST,
    GENERATOR,
    MODEL_DIGEST,
    POLICY_DIGEST,
    Vector,
    agree,
    sha256,
    vector,
)

# A tenant commitment key as stored: 64 hex digits and a newline. The HMAC key is the text.
COMMITMENT_KEY_FILE = b"b813c18f76ab9ea0341cfe7b2aac74e4ed610460c293c44a87afc90acd6895e5\n"

# ---------------------------------------------------------------------------------------------
# audit entry (audit/entry.py; RFC 9162 §2.1.1 leaf hash)

_COMMIT_DOMAIN = b"medclave-audit-commit-v1\x00"
_PSEUDONYM_DOMAIN = b"medclave-audit-pseudonym-v1\x00"


def _commit(key: bytes, label: str, salt: str, data: bytes) -> str:
    msg = _COMMIT_DOMAIN + label.encode() + b"\x00" + bytes.fromhex(salt) + data
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def _pseudonym(key: bytes, kind: str, identifier: str) -> str:
    msg = _PSEUDONYM_DOMAIN + kind.encode() + b"\x00" + identifier.encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


_PARAMS = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 512, "seed": 4242}
_ATTESTATION: dict[str, Any] = {"platform": "sev-snp", "status": "affirming", "secure": True,
                "policy_digest": POLICY_DIGEST}
_AUDIT_CASES: list[dict[str, Any]] = [
    {"name": "allowed_finished_with_key_version",
     "salt": "cea5dcd9a7c3e4dde60e0c284f20867e", "user_id": "dr.müller@st-mary.example",
     "patient_id": "MRN-000417", "prompt": "Patientin klagt über Brustschmerz — 胸痛, 38,5 °C?",
     "answer": "Differenzialdiagnose: ACS ausschließen; EKG und Troponin.",
     "document_ids": ["DocumentReference/ecg-2026-03-01", "Observation/troponin-1"],
     "fields": {"time": "2026-03-01T09:15:02.123456Z", "request_id": "req-000417",
                "tenant": "st-mary", "action": "infer", "params": _PARAMS,
                "ended": "stop", "completion_tokens": 57, "key_version": 2,
                "authorization": {"decision": "allow", "reason": "policy:clinician-own-patients",
                                  "policies": ["clinician-own-patients", "consent-treatment"]},
                "break_glass": False}},
    {"name": "allowed_without_new_fields",
     "salt": "9d98293b3a5c265cc5c1616dc4a73849", "user_id": "researcher-7",
     "patient_id": None, "prompt": "Summarise the cohort criteria.", "answer": "Adults, 18-65.",
     "document_ids": [],
     "fields": {"time": "2026-03-01T09:16:00Z", "request_id": "req-000418",
                "tenant": "st-mary", "action": "infer", "params": _PARAMS,
                "ended": None, "completion_tokens": None, "key_version": None,
                "authorization": {"decision": "allow", "reason": "policy:research-deidentified",
                                  "policies": []},
                "break_glass": False}},
    {"name": "refused_before_parsing",
     "salt": "dde5042e2c05166b5ba7d6d1e2f49843", "user_id": "nurse-12",
     "patient_id": None, "prompt": None, "answer": None, "document_ids": [],
     "fields": {"time": "2026-03-01T09:17:30.5Z", "request_id": "req-000419",
                "tenant": "st-mary", "action": "infer", "params": None,
                "ended": None, "completion_tokens": None, "key_version": 2,
                "authorization": {"decision": "deny", "reason": "auth.forbidden",
                                  "policies": ["forbid-outside-ward"]},
                "break_glass": False}},
    {"name": "streamed_client_gone_break_glass",
     "salt": "f5b71c9f54cda4ce50faeda89d29b7df", "user_id": "dr.okafor",
     "patient_id": "MRN-000999", "prompt": "Allergies for the unconscious patient in bay 3",
     "answer": "Penicillin (anaphylaxis, 2019); lat",
     "document_ids": ["AllergyIntolerance/pen-1"],
     "fields": {"time": "2026-03-01T23:59:59.999999Z", "request_id": "req-000420",
                "tenant": "st-mary", "action": "infer", "params": _PARAMS,
                "ended": "client_gone", "completion_tokens": 39, "key_version": 3,
                "authorization": {"decision": "allow", "reason": "policy:break-glass",
                                  "policies": ["break-glass"]},
                "break_glass": True}},
]


def _audit_case(case: dict[str, Any], key: bytes) -> Vector:
    from medclave.audit.entry import (
        AttestationSummary,
        AuditEntry,
        Authorization,
        Params,
        commit,
        pseudonym,
    )
    from medclave.audit.merkle import leaf_hash

    salt, fields = case["salt"], case["fields"]
    user = _pseudonym(key, "user", case["user_id"])
    patient = None if case["patient_id"] is None else _pseudonym(key, "patient", case["patient_id"])
    prompt = None if case["prompt"] is None else _commit(key, "prompt", salt,
                                                         case["prompt"].encode())
    answer = None if case["answer"] is None else _commit(key, "answer", salt,
                                                         case["answer"].encode())
    documents = [_commit(key, "document", salt, d.encode()) for d in case["document_ids"]]
    entry = {  # every field, in the model's order; canonical JSON sorts them
        "v": 1, "time": fields["time"], "request_id": fields["request_id"],
        "tenant": fields["tenant"], "user": user, "patient": patient, "action": fields["action"],
        "model_digest": MODEL_DIGEST, "engine_build": ENGINE_BUILD,
        "evidence_digest": EVIDENCE_DIGEST, "attestation": _ATTESTATION,
        "params": fields["params"], "salt": salt, "prompt": prompt, "answer": answer,
        "ended": fields["ended"], "completion_tokens": fields["completion_tokens"],
        "key_version": fields["key_version"], "documents": documents,
        "authorization": fields["authorization"], "break_glass": fields["break_glass"],
    }
    for later in ("ended", "completion_tokens", "key_version"):  # added after v1 shipped:
        if entry[later] is None:  # absent while unset, so earlier entries keep their bytes
            del entry[later]
    entry_bytes = bytes(rfc8785.dumps(entry))
    leaf = sha256(b"\x00" + entry_bytes)

    name = case["name"]
    agree(f"{name}: user pseudonym", user, pseudonym(key, "user", case["user_id"]))
    if patient is not None:
        agree(f"{name}: patient pseudonym", patient,
              pseudonym(key, "patient", case["patient_id"]))
    if prompt is not None:
        agree(f"{name}: prompt", prompt, commit(key, "prompt", salt, case["prompt"].encode()))
    if answer is not None:
        agree(f"{name}: answer", answer, commit(key, "answer", salt, case["answer"].encode()))
    agree(f"{name}: documents", documents,
          [commit(key, "document", salt, d.encode()) for d in case["document_ids"]])
    auth = fields["authorization"]
    built = AuditEntry(
        time=fields["time"], request_id=fields["request_id"], tenant=fields["tenant"],
        user=user, patient=patient, action=fields["action"], model_digest=MODEL_DIGEST,
        engine_build=ENGINE_BUILD, evidence_digest=EVIDENCE_DIGEST,
        attestation=AttestationSummary(**_ATTESTATION),
        params=None if fields["params"] is None else Params(**fields["params"]),
        salt=salt, prompt=prompt, answer=answer, ended=fields["ended"],
        completion_tokens=fields["completion_tokens"], key_version=fields["key_version"],
        documents=tuple(documents),
        authorization=Authorization(decision=auth["decision"], reason=auth["reason"],
                                    policies=tuple(auth["policies"])),
        break_glass=fields["break_glass"])
    agree(f"{name}: entry bytes", entry_bytes, built.to_bytes())
    agree(f"{name}: leaf hash", leaf, leaf_hash(built.leaf_data()))
    return {
        "name": name,
        "inputs": {k: case[k] for k in ("salt", "user_id", "patient_id", "prompt", "answer",
                                        "document_ids")},
        "entry_metadata": {k: v for k, v in entry.items()
                           if k not in ("user", "patient", "prompt", "answer", "documents")},
        "user_pseudonym": user,
        "patient_pseudonym": patient,
        "prompt_commitment": prompt,
        "answer_commitment": answer,
        "document_commitments": documents,
        "entry": entry,
        "entry_canonical_json": entry_bytes.decode("utf-8"),
        "entry_hex": entry_bytes.hex(),
        "leaf_hash_hex": leaf.hex(),
    }


@vector("audit_entry.json")
def audit_entry_vectors() -> Vector:
    from medclave.audit.entry import parse_commitment_key

    key = COMMITMENT_KEY_FILE.strip()
    agree("commitment key file", key, parse_commitment_key(COMMITMENT_KEY_FILE))
    return {
        "description": "Audit entry v1 (src/medclave/audit/entry.py): entry bytes = RFC 8785 "
                       "canonical JSON of every field (absent optional fields as null, except "
                       "ended, completion_tokens and key_version, left out while null); "
                       "commitment = HMAC-SHA256(key, \"medclave-audit-commit-v1\" 0x00 || label "
                       "|| 0x00 || salt || data); pseudonym = HMAC-SHA256(key, "
                       "\"medclave-audit-pseudonym-v1\" 0x00 || kind || 0x00 || UTF-8 id); leaf "
                       "hash = SHA-256(0x00 || entry) (RFC 9162 §2.1.1). The key is the stored "
                       "key file without surrounding whitespace (its text, not its hex decoding). "
                       "prompt, answer and ids are committed as UTF-8.",
        "generator": GENERATOR,
        "commitment_key_file_hex": COMMITMENT_KEY_FILE.hex(),
        "commitment_key_hex": key.hex(),
        "cases": [_audit_case(case, key) for case in _AUDIT_CASES],
    }


