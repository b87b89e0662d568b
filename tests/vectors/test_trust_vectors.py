"""Known answers for the continuous-trust formats, both directions, with negative twins: the
release-log leaf (audit/release.py) and the broker's standing answer (kbs/signing.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from medclave.audit import merkle
from medclave.audit.note import NoteVerifier
from medclave.audit.release import _open_entry
from medclave.errors import AuditError, KbsError
from medclave.kbs.signing import TrustedBrokers, standing_statement
from tests.conftest import flip

HERE = Path(__file__).resolve().parent
RELEASE: dict[str, Any] = json.loads((HERE / "release_entry.json").read_text())
STANDING: dict[str, Any] = json.loads((HERE / "kbs_standing.json").read_text())


@pytest.mark.parametrize("case", RELEASE["cases"], ids=[c["name"] for c in RELEASE["cases"]])
def test_release_leaf(case: dict[str, Any]) -> None:
    leaf = case["leaf"].encode()
    assert merkle.leaf_hash(leaf).hex() == case["leaf_hash_hex"]
    signer = NoteVerifier.from_vkey(case["signer_vkey"])
    entry = json.loads(leaf)
    assert _open_entry(entry, [signer]).release == "0.1.0"
    signature = base64.b64decode(entry["signature"])
    for i in range(len(signature)):
        bent = {**entry, "signature": base64.b64encode(flip(signature, i)).decode()}
        with pytest.raises(AuditError):
            _open_entry(bent, [signer])
    changed = {**entry, "statement": {**entry["statement"], "release": "0.1.1"}}
    with pytest.raises(AuditError):
        _open_entry(changed, [signer])


@pytest.mark.parametrize("case", STANDING["cases"], ids=[c["name"] for c in STANDING["cases"]])
def test_standing_answer(case: dict[str, Any]) -> None:
    statement = json.loads(case["statement"])
    ours = standing_statement(resource=statement["resource"],
                              nonce=bytes.fromhex(statement["nonce"]),
                              evidence=statement["evidence"], standing=statement["standing"])
    assert ours == case["statement"].encode()
    trusted = TrustedBrokers.of([bytes.fromhex(case["broker_public_key_hex"])])
    trusted.verify(case["broker_key_id"], case["signature_b64"], ours)
    signature = base64.b64decode(case["signature_b64"])
    for i in (0, 31, 63):
        with pytest.raises(KbsError):
            trusted.verify(case["broker_key_id"],
                           base64.b64encode(flip(signature, i)).decode(), ours)
    other = "revoked" if statement["standing"] == "good" else "good"
    with pytest.raises(KbsError):
        trusted.verify(case["broker_key_id"], case["signature_b64"], standing_statement(
            resource=statement["resource"], nonce=bytes.fromhex(statement["nonce"]),
            evidence=statement["evidence"], standing=other))
