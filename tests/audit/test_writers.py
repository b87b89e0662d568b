"""Several writers of one log (enclave replicas sharing the key, the origin and the database),
one of them kill -9ed mid-run, on SQLite and on PostgreSQL: nothing acknowledged is lost, every
receipt verifies and its checkpoint is consistent with the final log, and the log verifies.

Also: a writer refuses to extend a head another writer left unless it verifies (the shared
store is trusted for nothing)."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medclave.audit import merkle
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner, verify_checkpoint
from medclave.audit.receipt import Receipt, verify_receipt
from medclave.audit.store import node_id
from medclave.audit.verify import verify_log
from medclave.errors import AuditError
from tests.audit._backends import Backend
from tests.audit._builders import ORIGIN, make_entry
from tests.conftest import flip

WRITER = Path(__file__).with_name("_writer.py")
DEADLINE = 90.0


class _Writer:
    """A writer process and the acknowledgements it printed (complete lines only)."""

    def __init__(self, db: Backend, signer: NoteSigner, base: int) -> None:
        self.acks: list[tuple[int, int, bytes]] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER), db.name, db.where, signer.skey(), str(base)],
            stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith(b"\n"):
                return  # cut by the kill: never acknowledged
            kind, index, ident, receipt = line.split()
            assert kind == b"ack"
            self.acks.append((int(index), int(ident), base64.b64decode(receipt)))

    def wait_for(self, count: int) -> None:
        end = time.monotonic() + DEADLINE
        while len(self.acks) < count:
            assert self.proc.poll() is None, "the writer died on its own"
            assert time.monotonic() < end, f"{len(self.acks)} acknowledgements, not {count}"
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler, no rollback, no flush by the child
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_two_writers_one_killed(durable: Backend, log_signer: NoteSigner) -> None:
    AuditLog(durable.open(), origin=ORIGIN, signer=log_signer).close()  # created once
    a = _Writer(durable, log_signer, 0)
    b = _Writer(durable, log_signer, 1_000_000)
    try:
        a.wait_for(40)
        b.wait_for(40)
        a.kill()  # mid-run: its threads are inside appends and receipts
        b.wait_for(len(b.acks) + 40)  # the survivor goes on past the dead one's lock
    finally:
        a.kill()
        b.kill()
    c = _Writer(durable, log_signer, 2_000_000)  # a replica restarted after both died
    try:
        c.wait_for(10)
    finally:
        c.kill()

    store = durable.open(readonly=True)
    try:
        report = verify_log(store, log_signer.verifier)
        assert report.ok and report.latest_checkpoint == report.size
        size = report.size
        final = verify_checkpoint(store.latest_checkpoint()[1],  # type: ignore[index]
                                  log_signer.verifier, origin=ORIGIN).checkpoint
        acks = a.acks + b.acks + c.acks
        assert len({index for index, _, _ in acks}) == len(acks)  # one entry, one index
        receipts = []
        reader = AuditLog(store, origin=ORIGIN)
        for index, ident, raw in acks:
            got = store.entry(index)
            assert got is not None and got[0] == make_entry(ident).to_bytes()  # not lost
            verified = verify_receipt(Receipt.from_json(raw), log_signer.verifier)
            assert verified.index == index and verified.checkpoint.size <= size
            receipts.append(verified.checkpoint)
            merkle.verify_inclusion(got[1], index, size, reader.prove_inclusion(index, size),
                                    final.root)
        # Every receipt's checkpoint is one history with the final log (RFC 9162 §2.1.4).
        report = verify_log(store, log_signer.verifier, trusted=receipts)
        assert report.ok and len(report.trusted) == len(receipts)
        assert size >= len(acks) and {i for i, _, _ in a.acks} and {i for i, _, _ in b.acks}
    finally:
        store.close()


def test_a_head_left_by_another_writer_is_verified_first(durable: Backend,
                                                        log_signer: NoteSigner) -> None:
    a = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    b = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    a.append_batch([make_entry(i) for i in range(8)])
    b.append(make_entry(8))  # b catches up to a's verified head
    a.append_batch([make_entry(i) for i in range(9, 12)])
    # The database's owner rewrites a stored node on the right edge b is about to extend.
    row = durable.read("SELECT hash FROM nodes WHERE id = ?", (node_id(3, 0),))[0][0]
    assert isinstance(row, bytes | memoryview)
    durable.execute("UPDATE nodes SET hash = ? WHERE id = ?", (flip(bytes(row), 3), node_id(3, 0)))
    with pytest.raises(AuditError) as err:
        b.append_batch([make_entry(12)])
    assert err.value.code == "audit.log_inconsistent"
    assert err.value.context["cause"] == "audit.node_tampered"
    assert b.size == 9  # nothing hung from the forged head
    a.close()
    b.close()


def test_a_head_with_no_checkpoint_of_this_key_is_refused(durable: Backend,
                                                          log_signer: NoteSigner) -> None:
    a = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    b = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    a.append_batch([make_entry(0)])
    a.append_batch([make_entry(1)], checkpoint=False)  # nothing vouches for entry 1
    with pytest.raises(AuditError) as err:
        b.append_batch([make_entry(2)])
    assert err.value.context["cause"] == "audit.checkpoint_invalid"
    a.close()
    b.close()


def test_a_size_is_seen_only_once_its_entries_are_committed(durable: Backend,
                                                           log_signer: NoteSigner) -> None:
    """Readers on other connections (the e2e helpers, receipts) poll ``size`` and read the
    newest entry: it must be there, so the size moves only after the commit."""
    log = AuditLog(durable.open(), origin=ORIGIN, signer=log_signer)
    done = threading.Event()

    def write() -> None:
        for i in range(150):
            log.append(make_entry(i))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen = 0
    while not done.is_set():
        size = log.size
        if size:
            log.entry(size - 1)  # raises audit.index_out_of_range if not yet committed
            seen += 1
    writer.join()
    assert seen and log.size == 150
    log.close()
