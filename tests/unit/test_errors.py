"""The error catalogue: every code the code can raise is in it, with a status and a message."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from medclave.errors import CATALOGUE, AttestationError, KbsError, MedclaveError, PolicyError

SRC = Path(__file__).resolve().parents[2] / "src" / "medclave"
FAMILIES = sorted({code.split(".")[0] for code in CATALOGUE})
CODE = re.compile(rf"^({'|'.join(FAMILIES)})\.[a-z0-9_]+$")
# File names that happen to look like codes ("kbs.sqlite3", "model.sealed").
FILE_SUFFIXES = (".sqlite3", ".sealed", ".json", ".toml", ".pem", ".key", ".db", ".log", ".bin",
                 ".onnx")


def _codes_in_source() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and CODE.match(node.value) and not node.value.endswith(FILE_SUFFIXES)):
                found.add((node.value, str(path.relative_to(SRC))))
    return found


def test_every_code_used_in_source_is_catalogued() -> None:
    missing = sorted(f"{code} ({where})" for code, where in _codes_in_source() if code not in CATALOGUE)
    assert not missing, f"codes raised but not in CATALOGUE: {missing}"


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_catalogue_entries_are_complete(code: str) -> None:
    spec = CATALOGUE[code]
    assert 400 <= spec.status <= 599
    assert spec.message.endswith(".") and len(spec.message) > 10


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        MedclaveError("attestation.no_such_code")


def test_family_is_enforced() -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        KbsError("auth.token_expired")


def test_public_body_hides_the_detail() -> None:
    err = AttestationError("attestation.signature_invalid", "VCEK serial 42 on host h-17")
    assert err.to_public() == {"error": {"code": "attestation.signature_invalid",
                                         "message": CATALOGUE["attestation.signature_invalid"].message}}
    assert "h-17" in err.to_dict()["message"]


def test_not_found_and_not_permitted_look_the_same() -> None:
    assert CATALOGUE["kbs.not_found"] == CATALOGUE["kbs.unauthorized"]
    assert KbsError("kbs.not_found").public_message == KbsError("kbs.unauthorized").public_message


def test_policy_error_carries_every_violation() -> None:
    err = PolicyError("policy.refused", "two rules", violations=({"code": "a"}, {"code": "b"}))
    assert len(err.violations) == 2 and err.status == 403
