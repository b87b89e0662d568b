"""The log: appends, checkpoints, proofs from the store, reopening, and one writer only."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from medclave.audit import merkle
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner, verify_checkpoint
from medclave.audit.store import Batch, LogStore, MemoryLogStore
from medclave.audit.verify import verify_log
from medclave.errors import AuditError, MedclaveError
from tests.audit._backends import Backend
from tests.audit._builders import ORIGIN, make_entry


def test_batches_build_the_rfc9162_tree(store: LogStore, log_signer: NoteSigner) -> None:
    log = AuditLog(store, origin=ORIGIN, signer=log_signer)
    entries = [make_entry(i) for i in range(37)]
    acks = [log.append_batch(entries[a:b]) for a, b in ((0, 1), (1, 8), (8, 20), (20, 37))]
    assert [list(a.indices) for a in acks] == [[0], list(range(1, 8)), list(range(8, 20)),
                                                list(range(20, 37))]
    leaves = [merkle.leaf_hash(e.to_bytes()) for e in entries]
    assert log.root() == merkle.root_from_leaves(leaves)
    for ack in acks:
        assert ack.checkpoint is not None
        cp = verify_checkpoint(ack.checkpoint, log_signer.verifier).checkpoint
        assert cp.root == merkle.root_from_leaves(leaves[: cp.size])
    for size in range(1, 38):
        root = log.root_at(size)
        assert root == merkle.root_from_leaves(leaves[:size])
        for index in range(size):
            merkle.verify_inclusion(leaves[index], index, size,
                                    log.prove_inclusion(index, size), root)
        for size1 in range(size + 1):
            merkle.verify_consistency(size1, size, log.prove_consistency(size1, size),
                                      log.root_at(size1), root)
    report = verify_log(store, log_signer.verifier)
    assert report.ok and report.size == 37 and report.checkpoints == 4


def test_reopen_continues_the_same_tree(durable: Backend, log_signer: NoteSigner) -> None:
    log = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    log.append_batch([make_entry(i) for i in range(11)])
    log.close()
    log = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    assert log.size == 11
    log.append_batch([make_entry(i) for i in range(11, 30)])
    leaves = [merkle.leaf_hash(make_entry(i).to_bytes()) for i in range(30)]
    assert log.root() == merkle.root_from_leaves(leaves)
    verify_log(log.store, log_signer.verifier)
    log.close()
    reader = AuditLog(durable.open(readonly=True), origin=ORIGIN)
    with pytest.raises(AuditError) as err:
        reader.append(make_entry(99))
    assert err.value.code == "audit.log_conflict"
    reader.close()


def test_two_writers_of_one_log_append_in_one_sequence(
    durable: Backend, log_signer: NoteSigner
) -> None:
    """Replicas holding the same key and origin: each batch goes on the head the other left
    (verified first, see test_writers.py), never beside it."""
    a = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    b = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    assert a.append(make_entry(0)) == 0
    assert b.append(make_entry(1)) == 1  # b was opened at size 0: it catches up, no fork
    assert b.size == 2 and a.size == 1
    assert a.append_batch([make_entry(2), make_entry(3)]).first == 2
    receipt = b.receipt(1)  # under a's later checkpoint, beyond what b wrote
    assert receipt.index == 1
    leaves = [merkle.leaf_hash(make_entry(i).to_bytes()) for i in range(4)]
    assert a.root() == b.root_at(4) == merkle.root_from_leaves(leaves)
    report = verify_log(a.store, log_signer.verifier)
    assert report.ok and report.size == 4 and report.latest_checkpoint == 4
    a.close()
    b.close()


def test_wrong_origin_or_key_name_refused(durable: Backend, log_signer: NoteSigner) -> None:
    AuditLog(durable.open(), origin=ORIGIN, signer=log_signer).close()
    with pytest.raises(AuditError):
        AuditLog(durable.open(readonly=True), origin="other.example/log")
    with pytest.raises(AuditError):
        AuditLog(MemoryLogStore(), origin=ORIGIN, signer=NoteSigner.generate("other.example/log"))


def test_checkpoint_and_unsigned_tail(log_signer: NoteSigner) -> None:
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    log.append_batch([make_entry(i) for i in range(5)], checkpoint=False)
    with pytest.raises(AuditError):
        log.receipt(0)  # nothing is checkpointed yet
    with pytest.raises(AuditError) as err:
        verify_log(log.store, log_signer.verifier)
    assert err.value.code == "audit.checkpoint_invalid"
    note = log.checkpoint()
    assert verify_checkpoint(note, log_signer.verifier).checkpoint.size == 5
    log.append_batch([make_entry(5)], checkpoint=False)
    report = verify_log(log.store, log_signer.verifier)
    assert report.latest_checkpoint == 5 and report.size == 6


def test_bad_batches_refused(log_signer: NoteSigner) -> None:
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    for bad in ([], [b"x" * (16 * 1024 + 1)]):
        with pytest.raises(AuditError):
            log.append_batch(bad)
    assert log.size == 0
    with pytest.raises(AuditError):
        log.prove_inclusion(0)
    with pytest.raises(AuditError):
        log.entry(0)
    with pytest.raises(AuditError):
        log.root_at(1)


def test_one_log_one_key(durable: Backend, log_signer: NoteSigner) -> None:
    AuditLog(durable.open(), origin=ORIGIN, signer=log_signer).close()
    with pytest.raises(AuditError) as err:
        AuditLog(durable.open(), origin=ORIGIN, signer=NoteSigner.generate(ORIGIN))
    assert err.value.code == "audit.log_conflict"


def test_concurrent_appends_share_batches(durable: Backend, log_signer: NoteSigner) -> None:
    log = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    entries = [make_entry(i) for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        indices = list(pool.map(log.append, entries))
    assert sorted(indices) == list(range(400))
    for entry, index in zip(entries, indices, strict=True):
        assert log.entry(index) == entry.to_bytes()  # each caller got its own entry's index
    report = verify_log(log.store, log_signer.verifier)
    assert report.ok and report.size == 400 and report.latest_checkpoint == 400
    assert report.checkpoints <= 400  # one per batch, each batch one or more appends
    log.close()


def test_a_failed_batch_fails_its_callers_only(log_signer: NoteSigner) -> None:
    class FailsOnce(MemoryLogStore):
        failed = False

        def commit(self, batch: Batch) -> None:
            if not self.failed:
                self.failed = True
                raise OSError("disk full")
            super().commit(batch)

    log = AuditLog(FailsOnce(), origin=ORIGIN, signer=log_signer)
    with pytest.raises(MedclaveError) as err:
        log.append(make_entry(0))
    assert err.value.code == "internal" and log.size == 0
    assert log.append(make_entry(1)) == 0  # the next batch goes through


def test_group_commit_when_the_queue_outgrows_a_batch(
    log_signer: NoteSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of at most 3: a leader whose own entry did not fit hands over and waits."""
    import medclave.audit.log as log_module

    monkeypatch.setattr(log_module, "MAX_BATCH", 3)
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    data = [make_entry(i).to_bytes() for i in range(300)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        indices = list(pool.map(log.append, data))
    assert sorted(indices) == list(range(300))
    assert all(log.entry(i) == d for i, d in zip(indices, data, strict=True))
    assert verify_log(log.store, log_signer.verifier).size == 300
