"""The append-only audit log: batched appends, signed checkpoints, proofs and receipts.

Each batch is one store transaction holding its entries, the tree nodes they complete and, by
default, the checkpoint signed over the new size, so every acknowledged index is covered by a
signed checkpoint from the moment ``append_batch`` returns. The writer keeps the tree's right
edge (:class:`~medclave.audit.merkle.CompactRange`) in memory, so an append hashes O(1)
amortised nodes and, while it is the only writer, reads nothing but the store's size.

Several writers (enclave replicas holding the same broker-released key and origin, sharing one
PostgreSQL) append in one sequence: each batch is written under the store's write lock
(:meth:`~medclave.audit.store.LogStore.transaction`). A writer that finds the log grew since its
last batch does not trust the stored tree it is about to extend: the latest checkpoint must be
signed by the log key at exactly the stored size, the stored right edge must hash to its root,
and an RFC 9162 §2.1.4 consistency proof must lead from the tree this writer last signed to it
(:meth:`AuditLog._catch_up`); otherwise the append is refused with ``audit.log_inconsistent``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medclave.audit import merkle
from medclave.audit.entry import MAX_ENTRY_BYTES, AuditEntry
from medclave.audit.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
    verify_checkpoint,
)
from medclave.audit.receipt import ConsistencyProof, Receipt, encode_proof
from medclave.audit.store import (
    MAX_LOG_SIZE,
    Batch,
    LogStore,
    LogTransaction,
    SqliteLogStore,
    Synchronous,
)
from medclave.errors import AuditError, MedclaveError

MAX_BATCH = 10_000


@dataclass(frozen=True)
class Appended:
    """What ``append_batch`` acknowledges: indices ``first .. first + count - 1`` are durable."""

    first: int
    count: int
    checkpoint: bytes | None

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.count)


@dataclass
class _Pending:
    """One ``append`` waiting for its batch."""

    data: bytes
    index: int = -1
    error: BaseException | None = None
    done: bool = False
    lead: bool = False  # this caller writes the next batch
    wake: threading.Event = field(default_factory=threading.Event)

    def result(self) -> int:
        if self.error is None:
            return self.index
        if isinstance(self.error, MedclaveError):
            raise type(self.error)(self.error.code, self.error.detail) from self.error
        raise MedclaveError("internal", f"audit append failed: {self.error!r}") from self.error


class AuditLog:
    """A log over a :class:`LogStore`. Without a ``signer`` it is read-only (prove, receipts)."""

    def __init__(self, store: LogStore, *, origin: str, signer: NoteSigner | None = None) -> None:
        if signer is not None and signer.name != origin:
            raise AuditError("audit.checkpoint_invalid", "the log key is named after the origin")
        stored = store.get_meta("origin")
        if stored is None and signer is not None:
            store.set_meta("origin", origin)
            store.set_meta("vkey", signer.verifier.vkey())
        elif stored is not None and stored != origin:
            raise AuditError("audit.checkpoint_invalid", f"this log's origin is {stored!r}")
        elif signer is not None and store.get_meta("vkey") != signer.verifier.vkey():
            # One log, one key: checkpoints under two keys would not verify as one history.
            raise AuditError("audit.log_conflict", "this log is signed with another key")
        self.store = store
        self.origin = origin
        self._signer = signer
        self._lock = threading.Lock()  # one batch at a time: the tree's right edge
        self._cv = threading.Lock()  # the group-commit queue of ``append``
        self._queue: list[_Pending] = []
        self._leading = False
        size = store.size()
        self._edge = merkle.CompactRange(size, store.nodes(merkle.CompactRange.keys(size)))

    @classmethod
    def open_sqlite(
        cls,
        path: str | Path,
        *,
        origin: str,
        signer: NoteSigner | None = None,
        synchronous: Synchronous = "FULL",
    ) -> AuditLog:
        store = SqliteLogStore(path, readonly=signer is None, synchronous=synchronous)
        return cls(store, origin=origin, signer=signer)

    @classmethod
    def resume(cls, store: LogStore, *, origin: str, signer: NoteSigner) -> AuditLog:
        """Open ``store`` to extend it, failing closed: a log that is not this key's and
        origin's, or whose stored tree does not extend its own latest signed checkpoint (see
        :meth:`verify_head`), is refused with ``audit.log_inconsistent`` and ``store`` closed."""
        try:
            log = cls(store, origin=origin, signer=signer)
            log.verify_head()
        except AuditError as exc:
            store.close()
            if exc.code == "audit.log_inconsistent":
                raise
            raise AuditError("audit.log_inconsistent", f"{exc.code}: {exc.detail}",
                             cause=exc.code) from exc
        return log

    @property
    def size(self) -> int:
        return self._edge.size

    def root(self) -> bytes:
        return self._edge.root()

    def close(self) -> None:
        self.store.close()

    # --- writing ----------------------------------------------------------------------------

    def append(self, entry: AuditEntry | bytes) -> int:
        """Append one entry, return its index once durable and checkpointed.

        Concurrent callers share transactions (group commit): while one batch is being written
        (fsync, signature), new arrivals queue, and the first of them then writes them all as
        the next batch. N request threads cost one commit per batch, not one per entry.
        """
        data = entry.to_bytes() if isinstance(entry, AuditEntry) else bytes(entry)
        if len(data) > MAX_ENTRY_BYTES:
            raise AuditError("audit.entry_invalid", f"an entry exceeds {MAX_ENTRY_BYTES} bytes")
        slot = _Pending(data)
        with self._cv:
            self._queue.append(slot)
            if not self._leading:
                self._leading = slot.lead = True
        while True:
            if not slot.lead:
                slot.wake.wait()  # set when written, or when handed the lead
            if slot.done:
                return slot.result()
            with self._cv:
                # Lead one batch. If this caller's own entry did not fit in it, it waits for
                # a later leader like everyone else.
                slot.lead = False
                slot.wake.clear()
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
            self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        """Write ``batch``; wake its callers, and hand the lead to the first one still queued
        (waking only those, not every waiter, keeps many threads from thrashing the GIL)."""
        try:
            first = self.append_batch([p.data for p in batch]).first
            for i, p in enumerate(batch):
                p.index = first + i
        except BaseException as exc:  # every caller in the batch learns why
            for p in batch:
                p.error = exc
        finally:
            with self._cv:
                for p in batch:
                    p.done = True
                    p.wake.set()
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.wake.set()
                else:
                    self._leading = False

    def append_batch(
        self, entries: Sequence[AuditEntry | bytes], *, checkpoint: bool = True
    ) -> Appended:
        """Append atomically; return once durable. ``checkpoint`` signs the new size in the
        same transaction, so the receipt for any returned index can be built at once."""
        signer = self._writer()
        if not 0 < len(entries) <= MAX_BATCH:
            raise AuditError("audit.entry_invalid", f"a batch holds 1 to {MAX_BATCH} entries")
        data = [e.to_bytes() if isinstance(e, AuditEntry) else bytes(e) for e in entries]
        if any(len(d) > MAX_ENTRY_BYTES for d in data):
            raise AuditError("audit.entry_invalid", f"an entry exceeds {MAX_ENTRY_BYTES} bytes")
        leaves = [merkle.leaf_hash(d) for d in data]
        with self._lock:
            edge, note = self._write_batch(signer, data, leaves, checkpoint)
            # Only once committed: a reader that sees the new size on another connection
            # must find the rows (and a failed batch leaves no trace).
            self._edge = edge
        return Appended(edge.size - len(data), len(data), note)

    def _write_batch(self, signer: NoteSigner, data: list[bytes], leaves: list[bytes],
                     checkpoint: bool) -> tuple[merkle.CompactRange, bytes | None]:
        with self.store.transaction() as tx:
            head = self._catch_up(tx, signer)
            first = head.size
            if first + len(data) > MAX_LOG_SIZE:
                raise AuditError("audit.index_out_of_range", "the log is full")
            edge = merkle.CompactRange(first, head.hashes())
            nodes: list[tuple[int, int, bytes]] = []
            for leaf in leaves:
                edge.append(leaf, nodes)
            note = None
            if checkpoint:
                note = sign_checkpoint(Checkpoint(self.origin, edge.size, edge.root()), signer)
            tx.commit(
                Batch(first, data, leaves, nodes, None if note is None else (edge.size, note))
            )
        return edge, note

    def checkpoint(self) -> bytes:
        """Sign and store a checkpoint for the current size (idempotent per size)."""
        signer = self._writer()
        with self._lock:
            with self.store.transaction() as tx:
                head = self._catch_up(tx, signer)
                note = sign_checkpoint(Checkpoint(self.origin, head.size, head.root()), signer)
                tx.commit(Batch(head.size, (), (), (), (head.size, note)))
            self._edge = head
            return note

    def _catch_up(self, tx: LogTransaction, signer: NoteSigner) -> merkle.CompactRange:
        """The right edge to extend, under the write lock. Ours when the stored size is the
        size we last wrote; otherwise another writer extended the log, and its head is
        verified before anything hangs from it (module docstring), never trusted."""
        size = tx.size()
        mine = self._edge
        if size == mine.size:
            return mine
        try:
            if size < mine.size:
                raise AuditError("audit.rollback", f"the log has {size} entries; this writer "
                                 f"wrote {mine.size}")
            latest = tx.latest_checkpoint()
            if latest is None or latest[0] != size:
                raise AuditError("audit.checkpoint_invalid", f"{size} entries, but no signed "
                                 "checkpoint at that size")
            cp = verify_checkpoint(latest[1], signer.verifier, origin=self.origin).checkpoint
            if cp.size != size:
                raise AuditError("audit.checkpoint_invalid", f"the note is for size {cp.size}")
            head = merkle.CompactRange(size, tx.nodes(merkle.CompactRange.keys(size)))
            if head.root() != cp.root:
                raise AuditError("audit.node_tampered", "the stored right edge does not hash "
                                 f"to the signed root at {size}")
            if mine.size:
                proof = merkle.prove_consistency(mine.size, size, tx.nodes)
                merkle.verify_consistency(mine.size, size, proof, mine.root(), cp.root)
        except AuditError as exc:
            raise AuditError("audit.log_inconsistent", f"{exc.code}: {exc.detail}",
                             cause=exc.code) from exc
        return head

    def verify_head(self) -> int:
        """Before a writer extends a reopened log: its latest stored checkpoint must verify
        under this writer's key, and the stored tree (the right edge new entries hang from)
        must extend it, by an RFC 9162 §2.1.4 consistency proof over the stored nodes. Returns
        that checkpoint's size (0 for a fresh log); raises ``audit.log_inconsistent``.

        O(log n) reads: a quick check at boot, not a full verification. It cannot see a log
        truncated together with its checkpoints and nodes; receipts and witnesses catch that
        (``verify.inspect_log(trusted=...)``)."""
        signer = self._writer()
        with self._lock, self.store.transaction() as tx:
            # Under the write lock, from the store as it is now: another writer of a shared
            # log may have appended since this one was constructed.
            now = tx.size()
            latest = tx.latest_checkpoint()
            try:
                edge = merkle.CompactRange(now, tx.nodes(merkle.CompactRange.keys(now)))
                if latest is None:
                    if now:
                        raise AuditError("audit.checkpoint_invalid",
                                         f"{now} entries but no signed checkpoint")
                    return 0
                size, note = latest
                cp = verify_checkpoint(note, signer.verifier, origin=self.origin).checkpoint
                if cp.size != size:
                    raise AuditError("audit.checkpoint_invalid", f"the note is for size {cp.size}")
                if size > now:
                    raise AuditError("audit.rollback", f"the log has {now} entries; its "
                                     f"latest checkpoint covers {size}")
                proof = merkle.prove_consistency(size, now, tx.nodes)
                merkle.verify_consistency(size, now, proof, cp.root, edge.root())
            except AuditError as exc:
                raise AuditError("audit.log_inconsistent", f"{exc.code}: {exc.detail}",
                                 cause=exc.code) from exc
            self._edge = edge
            return size

    def _writer(self) -> NoteSigner:
        if self._signer is None:
            raise AuditError("audit.log_conflict", "this log was opened read-only")
        return self._signer

    # --- reading ------------------------------------------------------------------------------

    def entry(self, index: int) -> bytes:
        got = self.store.entry(index) if 0 <= index < self._readable(index + 1) else None
        if got is None:
            raise AuditError("audit.index_out_of_range", f"no entry {index} (size {self.size})")
        return got[0]

    def root_at(self, size: int) -> bytes:
        self._check_size(size)
        return merkle.root_at(size, self.store.nodes)

    def prove_inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        self._check_size(size)
        return merkle.prove_inclusion(index, size, self.store.nodes)

    def prove_consistency(self, size1: int, size2: int | None = None) -> list[bytes]:
        size2 = self.size if size2 is None else size2
        self._check_size(size2)
        return merkle.prove_consistency(size1, size2, self.store.nodes)

    def latest_checkpoint(self) -> tuple[int, bytes]:
        got = self.store.latest_checkpoint()
        if got is None:
            raise AuditError("audit.checkpoint_invalid", "the log has no checkpoint yet")
        return got

    def receipt(self, index: int, *, since: int | None = None) -> Receipt:
        """Entry ``index`` with its inclusion proof under the latest checkpoint.

        ``since``: the checkpoint size the client saw last; the receipt then carries the
        consistency proof from it, so the client can check the log only grew.
        """
        size, note = self.latest_checkpoint()
        if not 0 <= index < size:
            raise AuditError("audit.index_out_of_range", f"entry {index} is not checkpointed yet")
        consistency = None
        if since is not None:
            consistency = ConsistencyProof(
                size1=since, proof=encode_proof(self.prove_consistency(since, size))
            )
        return Receipt.build(
            entry=self.entry(index),
            index=index,
            proof=self.prove_inclusion(index, size),
            checkpoint=note,
            consistency=consistency,
        )

    def verifier(self) -> NoteVerifier | None:
        """The key this log says it signs with. Never trust it for verification: take the key
        from the enclave's attestation; this is only for display and for mismatch messages."""
        text = self.store.get_meta("vkey")
        return None if text is None else NoteVerifier.from_vkey(text)

    def _readable(self, size: int) -> int:
        """How far reads may go: this writer's size, or, when ``size`` is beyond it, the
        store's (other writers of a shared log appended since; a receipt is then built under
        their later checkpoint, which the client verifies like any other)."""
        return self.size if size <= self.size else max(self.size, self.store.size())

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._readable(size):
            raise AuditError("audit.index_out_of_range", f"tree size {size} > log size {self.size}")
