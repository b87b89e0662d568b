"""The release proof is read from an untrusted runtime: whatever it holds, checking it ends in
a catalogued refusal (never another exception), and only a genuine proof passes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.attestation.policy import ReleaseLogRule
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.release import ReleaseStatement, check_release, publish
from medclave.audit.store import MemoryLogStore
from medclave.errors import MedclaveError

KEY = NoteSigner.generate("fuzz.example/log")
SIGNER = NoteSigner.generate("release-signer")
RULE = ReleaseLogRule(log_key=KEY.verifier.vkey(), signers=(SIGNER.verifier.vkey(),))
_LOG = AuditLog(MemoryLogStore(), origin="fuzz.example/log", signer=KEY)
GENUINE: dict[str, Any] = json.loads(publish(_LOG, ReleaseStatement(
    release="1", measurements={"sim": ("aa" * 48,)}), SIGNER).to_json())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 2**40) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    keys = sorted(GENUINE)
    return st.builds(lambda k, v: {**GENUINE, k: v}, st.sampled_from(keys), json_values)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, _mutations()))
def test_any_release_proof_is_refused_cleanly(proof: Any) -> None:
    try:
        check_release(RULE, platform="sim", measurement="aa" * 48,
                      runtime={"release_proof": proof})
    except MedclaveError as exc:
        assert exc.code.startswith(("policy.", "audit.", "config.", "input."))
        return
    assert proof == GENUINE


def test_the_genuine_proof_passes() -> None:
    assert check_release(RULE, platform="sim", measurement="aa" * 48,
                         runtime={"release_proof": GENUINE}).release == "1"
