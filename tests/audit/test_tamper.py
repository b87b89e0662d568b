"""An operator with the database: every change is caught, with what and where.

Each test edits the store directly, SQLite file and PostgreSQL database alike (dropping or
disabling the append-only triggers first, as the owner of either can), and checks the first
finding of a full verification.
"""

from __future__ import annotations

import pytest

from medclave.audit import merkle
from medclave.audit.entry import AuditEntry
from medclave.audit.log import AuditLog
from medclave.audit.note import Checkpoint, NoteSigner, parse_note, sign_checkpoint
from medclave.audit.store import node_id
from medclave.audit.verify import inspect_log, verify_log
from medclave.errors import AuditError
from tests.audit._backends import Backend
from tests.audit._builders import ORIGIN, make_entry
from tests.conftest import flip

N = 40


@pytest.fixture
def log_file(durable: Backend, log_signer: NoteSigner) -> Backend:
    """A 40-entry log on each durable store (the name stays: it was a file first)."""
    log = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    for start in range(0, N, 8):
        log.append_batch([make_entry(i) for i in range(start, start + 8)])
    log.close()
    return durable


def _attack(db: Backend, *sql: tuple[str, tuple[object, ...]]) -> None:
    for stmt, args in sql:
        db.execute(stmt, args)


def _first(db: Backend, key: NoteSigner) -> tuple[str, str]:
    store = db.open(readonly=True)
    try:
        with pytest.raises(AuditError) as err:
            verify_log(store, key.verifier)
    finally:
        store.close()
    return err.value.code, err.value.context["where"]


def _entry(db: Backend, index: int) -> bytes:
    (data,) = db.read("SELECT data FROM entries WHERE idx = ?", (index,))[0]
    assert isinstance(data, bytes | memoryview)
    return bytes(data)


def _one(db: Backend, sql: str, args: tuple[object, ...] = ()) -> bytes:
    (value,) = db.read(sql, args)[0]
    assert isinstance(value, bytes | memoryview)
    return bytes(value)


def test_untouched_log_verifies(log_file: Backend, log_signer: NoteSigner) -> None:
    store = log_file.open(readonly=True)
    report = verify_log(store, log_signer.verifier)
    store.close()
    assert report.ok and report.size == N and report.checkpoints == N // 8


def test_changed_entry_byte(log_file: Backend, log_signer: NoteSigner) -> None:
    data = _entry(log_file, 13)
    _attack(log_file, ("UPDATE entries SET data = ? WHERE idx = 13", (flip(data, 200),)))
    assert _first(log_file, log_signer) == ("audit.entry_tampered", "entry 13")


def test_changed_entry_with_consistent_leaf_and_parents(
    log_file: Backend, log_signer: NoteSigner
) -> None:
    """The attacker rewrites the entry and recomputes every stored hash above it; only the
    signed checkpoints still remember the old root."""
    entry = AuditEntry.model_validate_json(_entry(log_file, 5))
    forged = entry.model_copy(update={"break_glass": True}).to_bytes()
    store = log_file.open(readonly=True)
    leaves = [store.entry(i)[1] for i in range(N)]  # type: ignore[index]
    store.close()
    leaves[5] = merkle.leaf_hash(forged)
    updates: list[tuple[str, tuple[object, ...]]] = [
        ("UPDATE entries SET data = ?, leaf = ? WHERE idx = 5", (forged, leaves[5]))
    ]
    level, index = leaves, 5
    for lvl in range(1, 6):
        level = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        index //= 2
        updates.append(("UPDATE nodes SET hash = ? WHERE id = ?",
                        (level[index], node_id(lvl, index))))
    _attack(log_file, *updates)
    code, where = _first(log_file, log_signer)
    assert code == "audit.entry_tampered"
    assert where == "entries 0..7"  # the first checkpoint (size 8) no longer matches


def test_changed_leaf_hash(log_file: Backend, log_signer: NoteSigner) -> None:
    _attack(log_file, ("UPDATE entries SET leaf = ? WHERE idx = 21", (bytes(32),)))
    assert _first(log_file, log_signer) == ("audit.node_tampered", "entry 21")


def test_changed_inner_node(log_file: Backend, log_signer: NoteSigner) -> None:
    h = _one(log_file, "SELECT hash FROM nodes WHERE id = ?", (node_id(3, 2),))
    _attack(log_file, ("UPDATE nodes SET hash = ? WHERE id = ?", (flip(h, 0), node_id(3, 2))))
    assert _first(log_file, log_signer) == ("audit.node_tampered", "node (3, 2)")


def test_deleted_inner_node(log_file: Backend, log_signer: NoteSigner) -> None:
    _attack(log_file, ("DELETE FROM nodes WHERE id = ?", (node_id(2, 3),)))
    assert _first(log_file, log_signer) == ("audit.node_tampered", "node (2, 3)")


def test_dropped_entry(log_file: Backend, log_signer: NoteSigner) -> None:
    _attack(log_file, ("DELETE FROM entries WHERE idx = 17", ()))
    assert _first(log_file, log_signer) == ("audit.entry_missing", "entries 17..17")


def test_dropped_last_entries(log_file: Backend, log_signer: NoteSigner) -> None:
    _attack(log_file, ("DELETE FROM entries WHERE idx >= 37", ()))
    assert _first(log_file, log_signer) == ("audit.entry_missing", "entries 37..39")


def test_forged_checkpoint_signature(log_file: Backend, log_signer: NoteSigner) -> None:
    note = _one(log_file, "SELECT note FROM checkpoints WHERE size = 24")
    sig_at = len(bytes(note)) - 10  # inside the base64 signature
    forged = bytearray(note)
    forged[sig_at] = ord("A") if forged[sig_at] != ord("A") else ord("B")
    _attack(log_file, ("UPDATE checkpoints SET note = ? WHERE size = 24", (bytes(forged),)))
    assert _first(log_file, log_signer) == ("audit.checkpoint_signature_invalid", "checkpoint 24")


def test_checkpoint_signed_by_another_key(log_file: Backend, log_signer: NoteSigner) -> None:
    """A whole rewritten history, signed by a key the auditor does not trust."""
    mallory = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 40, bytes(32)), mallory)
    _attack(log_file, ("UPDATE checkpoints SET note = ? WHERE size = 40", (note,)))
    assert _first(log_file, log_signer) == ("audit.checkpoint_signature_invalid", "checkpoint 40")


def test_checkpoint_moved_to_another_size(log_file: Backend, log_signer: NoteSigner) -> None:
    note = _one(log_file, "SELECT note FROM checkpoints WHERE size = 16")
    assert parse_note(bytes(note)).text.splitlines()[1] == "16"
    _attack(log_file, ("DELETE FROM checkpoints WHERE size = 32", ()),
            ("UPDATE checkpoints SET size = 32 WHERE size = 16", ()))
    assert _first(log_file, log_signer) == ("audit.checkpoint_invalid", "checkpoint 32")


def test_report_lists_every_problem(log_file: Backend, log_signer: NoteSigner) -> None:
    data = _entry(log_file, 2)
    _attack(
        log_file,
        ("UPDATE entries SET data = ? WHERE idx = 2", (flip(data, 100),)),
        ("UPDATE entries SET leaf = ? WHERE idx = 30", (bytes(32),)),
    )
    store = log_file.open(readonly=True)
    report = inspect_log(store, log_signer.verifier)
    store.close()
    wheres = {(f.code, f.where) for f in report.findings}
    assert ("audit.entry_tampered", "entry 2") in wheres
    assert any(f.where == "entry 30" for f in report.findings)
    assert not report.ok
