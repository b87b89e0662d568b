"""Rollback: an operator with the file truncates, empties or rewrites the log (with its
checkpoints and nodes, triggers dropped). What the log holds still verifies on its own; a
checkpoint kept outside it (a receipt's, a witness's) is what catches it, through
``medclave audit verify LOG --checkpoint FILE``."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.audit import merkle
from medclave.audit.log import AuditLog
from medclave.audit.note import (
    Checkpoint,
    Note,
    NoteSigner,
    Signature,
    parse_checkpoint,
    parse_note,
)
from medclave.audit.store import MemoryLogStore, SqliteLogStore
from medclave.audit.verify import inspect_log, open_trusted, verify_log
from medclave.audit.witness import witness_checkpoint
from medclave.cli.audit import app
from medclave.errors import AuditError
from tests.audit._builders import ORIGIN, build_log, make_entry, truncate_log
from tests.conftest import flip

runner = CliRunner()
N = 12


def _verify(path: Path, key: NoteSigner, *checkpoints: Path, extra: tuple[str, ...] = ()
            ) -> tuple[int, dict[str, Any]]:
    args = ["verify", str(path), "--key", key.verifier.vkey(), "--json", *extra]
    for cp in checkpoints:
        args += ["--checkpoint", str(cp)]
    res = runner.invoke(app, args)
    return res.exit_code, json.loads(res.stdout)


@pytest.fixture
def world(tmp_path: Path, log_signer: NoteSigner) -> tuple[Path, Path]:
    """The log, and the checkpoint at 12 an auditor kept (from a receipt, say)."""
    path = tmp_path / "audit.sqlite3"
    note = build_log(path, log_signer)
    assert parse_checkpoint(parse_note(note).text).size == N
    cp = tmp_path / "cp12.note"
    cp.write_bytes(note)
    return path, cp


@pytest.mark.parametrize("keep", [4, 0], ids=["truncated-to-4", "emptied"])
def test_a_truncated_or_emptied_log_verifies_alone_and_is_refused_against_a_checkpoint(
        world: tuple[Path, Path], log_signer: NoteSigner, keep: int) -> None:
    path, cp = world
    truncate_log(path, keep)
    # The attack as reported: on its own, what is left is a consistent (shorter) log. This is
    # documented behaviour, not a bug plain verification can fix: nothing in the file remembers.
    code, body = _verify(path, log_signer)
    assert (code, body["ok"], body["size"], body["findings"]) == (0, True, keep, [])
    assert body["trusted_checkpoints"] == []

    code, body = _verify(path, log_signer, cp)
    assert code == 1 and body["ok"] is False and body["size"] == keep
    assert body["findings"][0]["code"] == "audit.rollback"
    assert body["findings"][0]["where"] == "trusted checkpoint 12"
    assert body["trusted"] == [{"file": "cp12.note", "size": 12, "cosigned_by": [],
                                "root": parse_checkpoint(parse_note(cp.read_bytes()).text
                                                         ).root.hex()}]


@pytest.mark.parametrize("size", [12, 14])
def test_a_diverging_log_under_the_same_key_is_refused(
        world: tuple[Path, Path], tmp_path: Path, log_signer: NoteSigner, size: int) -> None:
    """The key holder rewrites entry 5 and re-signs a whole consistent tree (same size, or
    grown): every checkpoint in the file verifies, the kept one does not fit."""
    _, cp = world
    forged = tmp_path / "forged.sqlite3"
    build_log(forged, log_signer, size, rewrite=5)
    code, body = _verify(forged, log_signer)
    assert (code, body["ok"]) == (0, True)
    code, body = _verify(forged, log_signer, cp)
    assert code == 1
    assert [(f["code"], f["where"]) for f in body["findings"]] == [
        ("audit.consistency_invalid", "trusted checkpoint 12")]


def test_a_log_rewritten_under_another_key_is_refused(
        world: tuple[Path, Path], tmp_path: Path, log_signer: NoteSigner) -> None:
    _, cp = world
    mallory = NoteSigner.generate(ORIGIN)
    forged = tmp_path / "forged.sqlite3"
    build_log(forged, mallory, 16, rewrite=5)
    # Under the trusted key, its checkpoints do not verify.
    code, body = _verify(forged, log_signer, cp)
    assert code == 1 and body["findings"][0]["code"] == "audit.checkpoint_signature_invalid"
    # An auditor handed the new key (a new enclave attests it) still holds the old
    # checkpoint, which that key did not sign: refused, naming the file.
    code, body = _verify(forged, mallory)
    assert (code, body["ok"]) == (0, True)
    code, body = _verify(forged, mallory, cp)
    assert code == 1 and body["error"]["code"] == "audit.checkpoint_signature_invalid"
    assert body["error"]["where"] == "checkpoint cp12.note"


def test_a_checkpoint_with_a_flipped_signature_byte_is_refused(
        world: tuple[Path, Path], tmp_path: Path, log_signer: NoteSigner) -> None:
    path, cp = world
    note = parse_note(cp.read_bytes())
    (sig,) = note.signatures
    bad = tmp_path / "bad.note"
    bad.write_bytes(Note(note.text, (Signature(sig.name, sig.key_id, flip(sig.signature, 17)),)
                         ).to_bytes())
    code, body = _verify(path, log_signer, bad)
    assert code == 1 and body["ok"] is False
    assert body["error"] == {"code": "audit.checkpoint_signature_invalid",
                             "message": f"the signature by {ORIGIN} does not verify",
                             "where": "checkpoint bad.note"}


def test_a_log_that_grew_verifies_against_its_old_checkpoints(
        world: tuple[Path, Path], tmp_path: Path, log_signer: NoteSigner,
        witness_signer: NoteSigner) -> None:
    path, cp = world
    log = AuditLog.open_sqlite(path, origin=ORIGIN, signer=log_signer)
    first = log.receipt(2).to_json()  # a receipt at size 12 also holds the checkpoint
    log.append_batch([make_entry(i) for i in range(N, 20)])
    log.close()
    receipt = tmp_path / "receipt.json"
    receipt.write_bytes(first)
    cosigned = tmp_path / "cosigned.note"
    cosigned.write_bytes(witness_checkpoint(
        cp.read_bytes(), log_signer.verifier, [], signer=witness_signer,
        state_path=tmp_path / "w.json", now=datetime(2025, 3, 2, tzinfo=UTC)))
    witness = ("--witness", witness_signer.verifier.vkey())
    code, body = _verify(path, log_signer, cp, receipt, cosigned, extra=witness)
    assert (code, body["ok"], body["size"]) == (0, True, 20), body
    assert body["trusted_checkpoints"] == [12, 12, 12]
    assert [t["cosigned_by"] for t in body["trusted"]] == [[], [], ["witness.example/w1"]]
    # A quorum applies to every checkpoint given: the cosigned one meets it, the plain not.
    code, body = _verify(path, log_signer, cosigned, extra=(*witness, "--quorum", "1"))
    assert (code, body["ok"]) == (0, True)
    code, body = _verify(path, log_signer, cosigned, cp, extra=(*witness, "--quorum", "1"))
    assert code == 1 and body["error"]["code"] == "audit.cosignature_invalid"
    assert body["error"]["where"] == "checkpoint cp12.note"


def test_a_log_copied_at_an_older_size_is_refused(
        world: tuple[Path, Path], tmp_path: Path, log_signer: NoteSigner) -> None:
    """Rollback without editing SQL: an old copy of the file put back in place."""
    path, _ = world
    old = tmp_path / "old.sqlite3"
    shutil.copy(path, old)
    log = AuditLog.open_sqlite(path, origin=ORIGIN, signer=log_signer)
    note = log.append_batch([make_entry(i) for i in range(N, 16)]).checkpoint
    log.close()
    assert note is not None
    cp16 = tmp_path / "cp16.note"
    cp16.write_bytes(note)
    assert _verify(old, log_signer)[0] == 0
    code, body = _verify(old, log_signer, cp16)
    assert code == 1 and body["findings"][0]["code"] == "audit.rollback"


def test_the_library_check_matches_rfc9162_proofs(log_signer: NoteSigner) -> None:
    """``trusted`` through the library: sizes 0 (every log extends the empty tree), equal, and
    smaller pass; a root that is not the log's at that size, or a larger size, does not."""
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    notes = [log.append_batch([make_entry(i) for i in range(s, s + 3)]).checkpoint
             for s in range(0, 9, 3)]
    cps = [open_trusted(n or b"", log_signer.verifier).checkpoint for n in notes]
    empty = Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT)
    report = verify_log(log.store, log_signer.verifier, trusted=[empty, *cps])
    assert report.trusted == (0, 3, 6, 9)

    wrong = Checkpoint(ORIGIN, 6, merkle.leaf_hash(b"not the root"))
    larger = Checkpoint(ORIGIN, 10, cps[2].root)
    report = inspect_log(log.store, log_signer.verifier, trusted=[wrong, larger])
    assert [(f.code, f.where) for f in report.findings] == [
        ("audit.consistency_invalid", "trusted checkpoint 6"),
        ("audit.rollback", "trusted checkpoint 10")]
    with pytest.raises(AuditError) as err:
        verify_log(log.store, log_signer.verifier, trusted=[larger])
    assert err.value.code == "audit.rollback"


def test_open_trusted_takes_a_receipt_or_a_note(log_signer: NoteSigner) -> None:
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    note = log.append_batch([make_entry(i) for i in range(5)]).checkpoint
    assert note is not None
    from_receipt = open_trusted(log.receipt(3).to_json(), log_signer.verifier)
    assert from_receipt.checkpoint == open_trusted(note, log_signer.verifier).checkpoint
    with pytest.raises(AuditError) as err:
        open_trusted(b"{not json", log_signer.verifier)
    assert err.value.code == "audit.receipt_invalid"
    with pytest.raises(AuditError) as err:
        open_trusted(note, NoteSigner.generate(ORIGIN).verifier)
    assert err.value.code == "audit.checkpoint_signature_invalid"


def test_sqlite_store_truncation_helper_leaves_a_consistent_log(
        world: tuple[Path, Path], log_signer: NoteSigner) -> None:
    """The attack helper itself: after it, the file holds exactly a 4-entry log and its
    nodes (so the refusal above is the rollback check's, not a dangling node's)."""
    path, _ = world
    truncate_log(path, 4)
    store = SqliteLogStore(path, readonly=True)
    try:
        assert store.size() == 4 and [s for s, _ in store.checkpoints()] == [4]
        assert [i for i, _ in store.level(1)] == [0, 1] and [i for i, _ in store.level(2)] == [0]
        assert list(store.level(3)) == []
        assert store.nodes([(2, 0)]) == [merkle.root_from_leaves(
            [merkle.leaf_hash(make_entry(i).to_bytes()) for i in range(4)])]
    finally:
        store.close()
