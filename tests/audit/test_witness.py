"""The witness cosigns a log's checkpoints only along one append-only history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner, verify_checkpoint
from medclave.audit.store import MemoryLogStore
from medclave.audit.witness import load_state, witness_checkpoint
from medclave.errors import AuditError
from tests.audit._builders import ORIGIN, make_entry

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _cosign(note: bytes, log: NoteSigner, w: NoteSigner, state: Path, proof: list[bytes]) -> bytes:
    return witness_checkpoint(note, log.verifier, proof, signer=w, state_path=state, now=NOW)


def test_witness_follows_one_history(
    tmp_path: Path, log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    state = tmp_path / "witness.json"
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    first = log.append_batch([make_entry(i) for i in range(5)]).checkpoint
    assert first is not None
    cosigned = _cosign(first, log_signer, witness_signer, state, [])
    got = verify_checkpoint(cosigned, log_signer.verifier, witnesses=[witness_signer.verifier],
                            quorum=1)
    assert got.cosignatures[0].timestamp == int(NOW.timestamp())
    assert load_state(state)[ORIGIN].size == 5

    second = log.append_batch([make_entry(i) for i in range(5, 12)]).checkpoint
    assert second is not None
    with pytest.raises(AuditError) as err:  # no proof: refused, state unchanged
        _cosign(second, log_signer, witness_signer, state, [])
    assert err.value.code == "audit.consistency_invalid"
    assert load_state(state)[ORIGIN].size == 5
    _cosign(second, log_signer, witness_signer, state, log.prove_consistency(5, 12))
    assert load_state(state)[ORIGIN].size == 12

    with pytest.raises(AuditError):  # an older checkpoint is not cosigned again
        _cosign(first, log_signer, witness_signer, state, [])
    _cosign(second, log_signer, witness_signer, state, [])  # the same one again is fine


def test_witness_refuses_a_fork(
    tmp_path: Path, log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    state = tmp_path / "witness.json"
    honest = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    fork = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    note = honest.append_batch([make_entry(i) for i in range(6)]).checkpoint
    assert note is not None
    _cosign(note, log_signer, witness_signer, state, [])
    fork.append_batch([make_entry(i) for i in range(5)] + [make_entry(5, prompt="other")])
    forked = fork.append_batch([make_entry(6)]).checkpoint
    assert forked is not None
    with pytest.raises(AuditError) as err:
        _cosign(forked, log_signer, witness_signer, state, fork.prove_consistency(6, 7))
    assert err.value.code == "audit.consistency_invalid"
    same_size = fork.checkpoint()
    with pytest.raises(AuditError):
        _cosign(same_size, log_signer, witness_signer, state, [])


def test_witness_checks_the_log_signature(
    tmp_path: Path, log_signer: NoteSigner, witness_signer: NoteSigner
) -> None:
    mallory = NoteSigner.generate(ORIGIN)
    forged = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=mallory).append_batch(
        [make_entry(0)]).checkpoint
    assert forged is not None
    with pytest.raises(AuditError) as err:
        _cosign(forged, log_signer, witness_signer, tmp_path / "s.json", [])
    assert err.value.code == "audit.checkpoint_signature_invalid"
    assert not (tmp_path / "s.json").exists()


def test_corrupt_state_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    for text in ("not json", json.dumps({"v": 2, "logs": {}}),
                 json.dumps({"v": 1, "logs": {"o": {"size": -1, "root": "AA=="}}})):
        state.write_text(text)
        with pytest.raises(AuditError):
            load_state(state)
