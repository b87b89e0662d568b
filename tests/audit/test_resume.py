"""Reopening a log to extend it (an enclave restart): the stored tree must extend the log's own
latest signed checkpoint under the writer's key, or the writer refuses (fail closed). On SQLite
and on PostgreSQL."""

from __future__ import annotations

import pytest

from medclave.audit.log import AuditLog
from medclave.audit.note import Note, NoteSigner, Signature, parse_note
from medclave.audit.store import MemoryLogStore, node_id
from medclave.audit.verify import verify_log
from medclave.errors import AuditError
from tests.audit._backends import Backend, truncate
from tests.audit._builders import ORIGIN, make_entry
from tests.conftest import flip


def _edit(db: Backend, *sql: tuple[str, tuple[object, ...]]) -> None:
    for stmt, args in sql:
        db.execute(stmt, args)


def _refused(db: Backend, signer: NoteSigner) -> str:
    with pytest.raises(AuditError) as err:
        AuditLog.resume(db.open(), origin=ORIGIN, signer=signer)
    assert err.value.code == "audit.log_inconsistent"
    cause = err.value.context["cause"]
    assert isinstance(cause, str)
    return cause


def _one(db: Backend, sql: str) -> bytes:
    (value,) = db.read(sql)[0]
    assert isinstance(value, bytes | memoryview)
    return bytes(value)


@pytest.fixture
def log_file(durable: Backend, log_signer: NoteSigner) -> Backend:
    """12 entries in batches of 4 (checkpoints at 4, 8, 12), on SQLite and on PostgreSQL."""
    log = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    for start in range(0, 12, 4):
        log.append_batch([make_entry(i) for i in range(start, start + 4)])
    log.close()
    return durable


def test_a_fresh_or_intact_log_resumes_and_stays_one_log(
        log_file: Backend, log_signer: NoteSigner) -> None:
    fresh = AuditLog.resume(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    assert fresh.verify_head() == 0
    log = AuditLog.resume(log_file.open(), origin=ORIGIN, signer=log_signer)
    assert log.verify_head() == 12
    log.append_batch([make_entry(i) for i in range(12, 16)])
    log.close()
    store = log_file.open(readonly=True)
    report = verify_log(store, log_signer.verifier)
    store.close()
    assert (report.size, report.checkpoints) == (16, 4)


def test_entries_removed_under_kept_checkpoints(log_file: Backend, log_signer: NoteSigner) -> None:
    _edit(log_file, ("DELETE FROM entries WHERE idx >= 4", ()))
    assert _refused(log_file, log_signer) == "audit.rollback"


def test_a_changed_node_on_the_right_edge(log_file: Backend, log_signer: NoteSigner) -> None:
    h = _one(log_file, f"SELECT hash FROM nodes WHERE id = {node_id(2, 2)}")
    _edit(log_file, ("UPDATE nodes SET hash = ? WHERE id = ?", (flip(h, 3), node_id(2, 2))))
    assert _refused(log_file, log_signer) == "audit.consistency_invalid"


def test_a_deleted_node_on_the_right_edge(log_file: Backend, log_signer: NoteSigner) -> None:
    _edit(log_file, ("DELETE FROM nodes WHERE id = ?", (node_id(3, 0),)))
    assert _refused(log_file, log_signer) == "audit.node_tampered"


def test_a_latest_checkpoint_that_does_not_verify(log_file: Backend, log_signer: NoteSigner
                                                  ) -> None:
    raw = _one(log_file, "SELECT note FROM checkpoints WHERE size = 12")
    note = parse_note(bytes(raw))
    (sig,) = note.signatures
    bad = Note(note.text, (Signature(sig.name, sig.key_id, flip(sig.signature, 0)),)).to_bytes()
    _edit(log_file, ("UPDATE checkpoints SET note = ? WHERE size = 12", (bad,)))
    assert _refused(log_file, log_signer) == "audit.checkpoint_signature_invalid"


def test_entries_without_any_checkpoint(log_file: Backend, log_signer: NoteSigner) -> None:
    _edit(log_file, ("DELETE FROM checkpoints", ()))
    assert _refused(log_file, log_signer) == "audit.checkpoint_invalid"


def test_the_log_of_another_key(log_file: Backend) -> None:
    assert _refused(log_file, NoteSigner.generate(ORIGIN)) == "audit.log_conflict"


def test_a_consistent_truncation_resumes(log_file: Backend, log_signer: NoteSigner) -> None:
    """The limit of a local check: truncated with its checkpoints and nodes, the log is a
    shorter valid log, and the writer cannot tell. Receipts and witnesses catch it
    (test_rollback)."""
    truncate(log_file, 4)
    log = AuditLog.resume(log_file.open(), origin=ORIGIN, signer=log_signer)
    assert (log.size, log.verify_head()) == (4, 4)
    log.close()
