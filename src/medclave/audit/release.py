"""Release transparency: every release's reference values, in a public append-only log.

A maintainer publishes (``medclave release publish``) one **signed release statement** per
release: the enclave measurements per platform, the model digests and the engine builds the
release produces, with its build provenance (an in-toto Statement v1 carrying a SLSA
Provenance v1 predicate: source commit, builder, lockfile digest). The statement is appended
to a **release log**: the same RFC 9162 Merkle tree, C2SP checkpoints and witness
cosignatures as the audit log (``audit/log.py``, ``audit/note.py``; witnesses cosign it with
``medclave audit witness``). Anyone can see every release ever published; a release cannot be
shown to one hospital and hidden from the auditors.

An appraisal policy may then say "accept a measurement published in release log L, with at
least K witness cosignatures" (``[release_log]`` in the policy) instead of listing
measurements. The enclave serves the **release proof** in its attestation's runtime
(``release_proof``: the statement, its leaf index, the inclusion proof and the cosigned
checkpoint, the shape of an audit receipt), and the relying party checks it offline
(:func:`verify_release_proof`, :func:`check_release`): the checkpoint is signed by L's key and
cosigned by K of the named witnesses, the statement is included under it and signed by a
listed release signer, and it names the attested measurement (and the runtime's model digest
and engine build, where the statement lists them).

Leaf bytes: the RFC 8785 canonical JSON of ``{"statement": ..., "signer": VKEY,
"signature": BASE64}``; the signature is Ed25519 by the signer's note key over
``"medclave-release-v1\\n" || canonical(statement)``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.attestation.policy import ReleaseLogRule
from medclave.audit import merkle
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner, NoteVerifier, verify_checkpoint
from medclave.audit.receipt import Receipt, decode_proof
from medclave.crypto.canonical import canonical_json
from medclave.errors import AuditError, InputError, PolicyError

__all__ = ["ReleaseLogRule", "ReleaseStatement", "check_release", "proof_under", "provenance",
           "publish", "signed_entry", "verify_release_proof"]

STATEMENT_TYPE = "medclave-release/v1"
SIGNING_CONTEXT = b"medclave-release-v1\n"
IN_TOTO_STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:medclave:release-build:v1"
MAX_STATEMENT_BYTES = 64 * 1024
_HEX = r"^[0-9a-f]{64}$|^[0-9a-f]{96}$"


class ReleaseStatement(BaseModel):
    """What one release produces (its reference values) and how it was built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(default=STATEMENT_TYPE, pattern=f"^{STATEMENT_TYPE}$")
    release: str = Field(min_length=1, max_length=64)
    measurements: dict[str, tuple[str, ...]] = Field(max_length=16)
    model_digests: tuple[str, ...] = Field(default=(), max_length=64)
    engine_builds: tuple[str, ...] = Field(default=(), max_length=64)
    provenance: dict[str, Any] = Field(default_factory=dict)

    def check(self) -> ReleaseStatement:
        import re

        for values in self.measurements.values():
            if not values or any(not re.fullmatch(_HEX, v) for v in values):
                raise InputError("input.malformed", "measurements are lower-case hex digests")
        if any(not re.fullmatch(r"^[0-9a-f]{64}$", d) for d in self.model_digests):
            raise InputError("input.malformed", "model digests are SHA-256 hex")
        if len(canonical_json(self.model_dump(mode="json"))) > MAX_STATEMENT_BYTES:
            raise InputError("input.too_large", "the release statement is too large")
        return self


def provenance(*, subject: str, subject_sha256: str, source_uri: str, commit: str,
               builder: str, lockfile_sha256: str) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA Provenance v1 predicate for one built artifact."""
    return {
        "_type": IN_TOTO_STATEMENT,
        "subject": [{"name": subject, "digest": {"sha256": subject_sha256}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"source": {"uri": source_uri,
                                                  "digest": {"gitCommit": commit}}},
                "resolvedDependencies": [{"name": "lockfile",
                                          "digest": {"sha256": lockfile_sha256}}],
            },
            "runDetails": {"builder": {"id": builder}},
        },
    }


def _signed_bytes(statement: ReleaseStatement) -> bytes:
    return SIGNING_CONTEXT + canonical_json(statement.model_dump(mode="json"))


def signed_entry(statement: ReleaseStatement, signer: NoteSigner) -> bytes:
    """The log leaf for ``statement``, signed by the release signer."""
    statement.check()
    signature = signer.private_key.sign(_signed_bytes(statement))
    return canonical_json({"statement": statement.model_dump(mode="json"),
                           "signer": signer.verifier.vkey(),
                           "signature": base64.b64encode(signature).decode()})


def _open_entry(entry: Mapping[str, Any], signers: Sequence[NoteVerifier]) -> ReleaseStatement:
    try:
        statement = ReleaseStatement.model_validate(entry.get("statement")).check()
        signer_text, signature_text = entry.get("signer"), entry.get("signature")
        if not isinstance(signer_text, str) or not isinstance(signature_text, str):
            raise AuditError("audit.release_invalid", "the entry carries no signer or signature")
        signature = base64.b64decode(signature_text, validate=True)
    except (ValidationError, InputError, binascii.Error, ValueError) as exc:
        raise AuditError("audit.release_invalid", "not a release statement") from exc
    if set(entry) != {"statement", "signer", "signature"}:
        raise AuditError("audit.release_invalid", "unexpected fields in the release entry")
    if signers:
        known = {v.vkey(): v for v in signers}
        verifier = known.get(signer_text)
        if verifier is None:
            raise AuditError("audit.release_invalid", "signed by no listed release signer")
        try:
            verifier._ed25519().verify(signature, _signed_bytes(statement))
        except InvalidSignature as exc:
            raise AuditError("audit.release_invalid", "the release signature fails") from exc
    return statement


def verify_release_proof(proof: Mapping[str, Any] | bytes, rule: ReleaseLogRule
                         ) -> ReleaseStatement:
    """The statement a release proof proves published in the rule's log, or a refusal."""
    try:
        receipt = (Receipt.from_json(proof) if isinstance(proof, bytes)
                   else Receipt.model_validate(dict(proof)))
    except (ValidationError, ValueError) as exc:
        raise AuditError("audit.release_invalid", "not a release proof") from exc
    try:
        log_key = NoteVerifier.from_vkey(rule.log_key)
        witnesses = [NoteVerifier.from_vkey(w) for w in rule.witnesses]
        signers = [NoteVerifier.from_vkey(s) for s in rule.signers]
    except (AuditError, InputError) as exc:
        raise InputError("config.invalid", "a release log key in the policy is invalid") from exc
    opened = verify_checkpoint(receipt.checkpoint.encode(), log_key, witnesses=witnesses,
                               quorum=rule.quorum)
    leaf = canonical_json(receipt.entry)
    merkle.verify_inclusion(merkle.leaf_hash(leaf), receipt.index, opened.checkpoint.size,
                            decode_proof(receipt.proof), opened.checkpoint.root)
    return _open_entry(receipt.entry, signers)


def check_release(rule: ReleaseLogRule, *, platform: str, measurement: str | None,
                  runtime: Mapping[str, Any]) -> ReleaseStatement:
    """The policy rule: the runtime's ``release_proof`` proves a release that names this
    measurement on this platform (and the runtime's model digest and engine build where the
    release lists them); ``policy.release_not_logged`` otherwise."""
    proof = runtime.get("release_proof")
    if not isinstance(proof, dict):
        raise PolicyError("policy.release_not_logged", "the enclave serves no release proof")
    try:
        statement = verify_release_proof(proof, rule)
    except AuditError as exc:
        raise PolicyError("policy.release_not_logged", f"{exc.code}: {exc.detail}") from exc
    if measurement is None or measurement.lower() not in statement.measurements.get(platform, ()):
        raise PolicyError("policy.release_not_logged",
                          f"release {statement.release} does not name this {platform} build")
    model, build = runtime.get("model_digest"), runtime.get("engine_build")
    if statement.model_digests and isinstance(model, str) and model not in statement.model_digests:
        raise PolicyError("policy.release_not_logged", "the model is not in the release")
    if statement.engine_builds and isinstance(build, str) and build not in statement.engine_builds:
        raise PolicyError("policy.release_not_logged", "the engine build is not in the release")
    return statement


def publish(log: AuditLog, statement: ReleaseStatement, signer: NoteSigner) -> Receipt:
    """Append the signed statement; its proof under the new (not yet cosigned) checkpoint."""
    index = log.append(signed_entry(statement, signer))
    return log.receipt(index)


def proof_under(log: AuditLog, index: int, note: bytes) -> Receipt:
    """The proof of entry ``index`` under ``note``: a checkpoint of this log (typically the
    one witnesses cosigned), whose root must be the log's at its size."""
    verifier = log.verifier()
    if verifier is None:
        raise AuditError("audit.checkpoint_signature_invalid", "the log has no key")
    checkpoint = verify_checkpoint(note, verifier).checkpoint
    if checkpoint.size > log.size or log.root_at(checkpoint.size) != checkpoint.root:
        raise AuditError("audit.consistency_invalid", "the checkpoint is not of this log")
    if index >= checkpoint.size:
        raise AuditError("audit.release_invalid", "the entry is not under this checkpoint")
    return Receipt.build(entry=log.entry(index), index=index,
                         proof=log.prove_inclusion(index, checkpoint.size), checkpoint=note)
