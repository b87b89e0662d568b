"""Where the log lives: a small repository interface, an in-memory store and SQLite (WAL).

A store keeps the entries with their leaf hashes, every perfect subtree above the leaves (so any
proof for any size is O(log n) lookups, see ``merkle.NodeSource``) and the signed checkpoints.
It is trusted for nothing: :func:`medclave.audit.verify.verify_log` recomputes all of it. What
a store must give is atomicity: :meth:`LogStore.commit` writes a whole batch (entries, nodes and
its checkpoint) or nothing, so a crash never leaves a torn entry or a tree that outruns its data.
:meth:`LogStore.transaction` gives a writer the store's write lock (this process's and every other
process's writers wait), so several writers sharing one log append in one sequence
(:meth:`medclave.audit.log.AuditLog.append_batch`; docs/scaling-out.md).

The SQLite store's schema is versioned (:mod:`medclave.migrations`): version 1 is the tables and
the append-only triggers; a log written before versions were recorded is version 1; a newer
version is refused, read-only opening included, before anything is written.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from medclave import migrations
from medclave.audit.merkle import NodeKey
from medclave.errors import AuditError

# Node keys pack (level, index) into one SQLite integer key: 2^50 leaves is plenty, and one
# level's nodes sit in one contiguous key range, which verification scans in order.
_INDEX_BITS = 50
MAX_LOG_SIZE = 1 << _INDEX_BITS


def node_id(level: int, index: int) -> int:
    return (level << _INDEX_BITS) | index


def log_name(origin: str, vkey: str) -> str:
    """The name the enclave gives the log of ``origin`` under the key ``vkey`` (its SQLite
    file, its rows in PostgreSQL): one log per (origin, key), found again from the key alone
    (a verifier key names its origin)."""
    return hashlib.sha256(f"{origin}\n{vkey}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Batch:
    """Entries ``first .. first + len(entries) - 1``, with what they add to the tree."""

    first: int
    entries: Sequence[bytes]
    leaves: Sequence[bytes]
    nodes: Sequence[tuple[int, int, bytes]] = ()  # (level >= 1, index, hash)
    checkpoint: tuple[int, bytes] | None = None  # (tree size, signed note)


class LogTransaction(Protocol):
    """What a writer reads and writes while it holds the store's write lock."""

    def size(self) -> int: ...

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]: ...

    def latest_checkpoint(self) -> tuple[int, bytes] | None: ...

    def commit(self, batch: Batch) -> None: ...


class LogStore(Protocol):
    def transaction(self) -> AbstractContextManager[LogTransaction]:
        """The write lock, over this process and every other writer of the log: reads inside
        see every batch committed before it, and a :meth:`LogTransaction.commit` inside is
        durable when the block ends (an exception rolls it back)."""

    def size(self) -> int:
        """One past the highest stored index."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def commit(self, batch: Batch) -> None:
        """Store the batch atomically; ``audit.log_conflict`` if ``first`` is not ``size()``."""

    def add_checkpoint(self, size: int, note: bytes) -> None: ...

    def entry(self, index: int) -> tuple[bytes, bytes] | None:
        """``(data, leaf hash)`` of entry ``index``, or None."""

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        """``(index, data, leaf hash)`` in index order from ``start``."""

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        """Hashes of the perfect subtrees ``keys`` (level 0 is the leaf hash), in order."""

    def level(self, level: int) -> Iterator[tuple[int, bytes]]:
        """``(index, hash)`` of the stored nodes at ``level >= 1``, in index order."""

    def checkpoints(self) -> Iterator[tuple[int, bytes]]:
        """``(size, note)`` in size order."""

    def latest_checkpoint(self) -> tuple[int, bytes] | None: ...

    def close(self) -> None: ...


def _conflict(first: int, size: int) -> AuditError:
    return AuditError("audit.log_conflict", f"append at {first}, but the log has {size} entries")


def _missing(what: str) -> AuditError:
    return AuditError("audit.node_tampered", f"stored node {what} is missing")


@dataclass
class MemoryLogStore:
    """For tests and short-lived tools; the same contract as SQLite, minus durability."""

    meta: dict[str, str] = field(default_factory=dict)
    data: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    tree: dict[NodeKey, bytes] = field(default_factory=dict)
    notes: dict[int, bytes] = field(default_factory=dict)
    _writing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @contextmanager
    def transaction(self) -> Iterator[LogTransaction]:
        # commit() is the block's last store call, and it writes all or (on conflict) nothing.
        with self._writing:
            yield self

    def size(self) -> int:
        # Appends arrive in index order and dicts keep insertion order: the last key is the max.
        return next(reversed(self.data), -1) + 1

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value

    def commit(self, batch: Batch) -> None:
        if batch.first != self.size():
            raise _conflict(batch.first, self.size())
        for i, (data, leaf) in enumerate(zip(batch.entries, batch.leaves, strict=True)):
            self.data[batch.first + i] = (bytes(data), leaf)
        for level, index, h in batch.nodes:
            self.tree[(level, index)] = h
        if batch.checkpoint is not None:
            self.add_checkpoint(*batch.checkpoint)

    def add_checkpoint(self, size: int, note: bytes) -> None:
        self.notes.setdefault(size, note)

    def entry(self, index: int) -> tuple[bytes, bytes] | None:
        return self.data.get(index)

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        for index in sorted(i for i in self.data if i >= start):
            data, leaf = self.data[index]
            yield index, data, leaf

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        out = []
        for level, index in keys:
            row = self.data.get(index)
            got = (row[1] if row else None) if level == 0 else self.tree.get((level, index))
            if got is None:
                raise _missing(f"({level}, {index})")
            out.append(got)
        return out

    def level(self, level: int) -> Iterator[tuple[int, bytes]]:
        for lvl, index in sorted(k for k in self.tree if k[0] == level):
            yield index, self.tree[(lvl, index)]

    def checkpoints(self) -> Iterator[tuple[int, bytes]]:
        for size in sorted(self.notes):
            yield size, self.notes[size]

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        if not self.notes:
            return None
        size = max(self.notes)
        return size, self.notes[size]

    def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes(id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints(size INTEGER PRIMARY KEY, note BLOB NOT NULL);
"""
# Append-only by construction: a bug in this process cannot rewrite history. Someone with the
# file can drop these triggers, which is why verification recomputes everything.
_GUARDS = "".join(
    f"CREATE TRIGGER IF NOT EXISTS {t}_append_only_{op} BEFORE {op.upper()} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
    for t in ("entries", "nodes", "checkpoints")
    for op in ("update", "delete")
)

MIGRATIONS = (migrations.Migration(1, "audit log tables and append-only triggers",
                                   migrations.script(_SCHEMA + _GUARDS)),)


def _legacy_version(db: sqlite3.Connection) -> int:
    return 1 if "entries" in migrations.tables(db) else 0


Synchronous = Literal["FULL", "NORMAL"]


class SqliteLogStore:
    """SQLite in WAL mode; one transaction per batch.

    ``synchronous="FULL"`` (the default) fsyncs the WAL at every commit, so an acknowledged
    batch survives power loss; ``"NORMAL"`` survives a process crash (kill -9) but may lose the
    last batches on power loss. ``readonly`` opens the file for auditors without writing to it.
    """

    def __init__(
        self, path: str | Path, *, readonly: bool = False, synchronous: Synchronous = "FULL"
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        try:
            if readonly:
                if not self.path.is_file():
                    raise AuditError("audit.entry_missing", f"no log at {self.path.name}")
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
                migrations.check_version(self._db, store="audit", migrations=MIGRATIONS,
                                         legacy=_legacy_version)
            else:
                self._db = sqlite3.connect(self.path, check_same_thread=False,
                                           isolation_level=None)

                def pragmas(db: sqlite3.Connection) -> None:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute(f"PRAGMA synchronous={synchronous}")

                migrations.migrate(self._db, store="audit", migrations=MIGRATIONS,
                                   legacy=_legacy_version, after_check=pragmas)
            self._db.isolation_level = None  # explicit BEGIN/COMMIT below
        except sqlite3.DatabaseError as exc:
            raise AuditError("audit.entry_missing", f"cannot open log: {exc}") from exc

    def _one(self, sql: str, args: Sequence[object] = ()) -> tuple[object, ...] | None:
        with self._lock:
            row: tuple[object, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def size(self) -> int:
        row = self._one("SELECT MAX(idx) FROM entries")
        return 0 if row is None or row[0] is None else int(str(row[0])) + 1

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @contextmanager
    def transaction(self) -> Iterator[LogTransaction]:
        with self._lock:
            # IMMEDIATE takes SQLite's write lock first: another process's writer waits here,
            # so what is read inside cannot go stale before the commit.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def commit(self, batch: Batch) -> None:
        with self.transaction() as tx:
            tx.commit(batch)

    def add_checkpoint(self, size: int, note: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints(size, note) VALUES (?, ?)", (size, note)
            )

    def entry(self, index: int) -> tuple[bytes, bytes] | None:
        row = self._one("SELECT data, leaf FROM entries WHERE idx = ?", (index,))
        return None if row is None else (_blob(row[0]), _blob(row[1]))

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        # A separate cursor streams rows without holding the whole log in memory.
        cur = self._db.execute(
            "SELECT idx, data, leaf FROM entries WHERE idx >= ? ORDER BY idx", (start,)
        )
        for index, data, leaf in cur:
            yield int(index), _blob(data), _blob(leaf)

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        with self._lock:
            return _sqlite_nodes(self._db, keys)

    def level(self, level: int) -> Iterator[tuple[int, bytes]]:
        cur = self._db.execute(
            "SELECT id, hash FROM nodes WHERE id >= ? AND id < ? ORDER BY id",
            (node_id(level, 0), node_id(level + 1, 0)),
        )
        for nid, h in cur:
            yield int(nid) & (MAX_LOG_SIZE - 1), _blob(h)

    def checkpoints(self) -> Iterator[tuple[int, bytes]]:
        cur = self._db.execute("SELECT size, note FROM checkpoints ORDER BY size")
        for size, note in cur:
            yield int(size), _blob(note)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        row = self._one("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        return None if row is None else (int(str(row[0])), _blob(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SqliteTransaction:
    """The store's reads and the batch write on the connection inside ``BEGIN IMMEDIATE``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def size(self) -> int:
        row = self._db.execute("SELECT MAX(idx) FROM entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        return _sqlite_nodes(self._db, keys)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC "
                               "LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), _blob(row[1]))

    def commit(self, batch: Batch) -> None:
        db = self._db
        size = self.size()
        if size != batch.first:
            raise _conflict(batch.first, size)
        db.executemany(
            "INSERT INTO entries(idx, leaf, data) VALUES (?, ?, ?)",
            zip(range(batch.first, batch.first + len(batch.entries)), batch.leaves,
                batch.entries, strict=True),
        )
        db.executemany(
            "INSERT INTO nodes(id, hash) VALUES (?, ?)",
            ((node_id(level, index), h) for level, index, h in batch.nodes),
        )
        if batch.checkpoint is not None:
            db.execute("INSERT OR IGNORE INTO checkpoints(size, note) VALUES (?, ?)",
                       batch.checkpoint)


def _sqlite_nodes(db: sqlite3.Connection, keys: Sequence[NodeKey]) -> list[bytes]:
    leaves = [i for lvl, i in keys if lvl == 0]
    ids = [node_id(lvl, i) for lvl, i in keys if lvl > 0]
    found: dict[NodeKey, bytes] = {}
    if leaves:
        marks = ",".join("?" * len(leaves))
        sql = f"SELECT idx, leaf FROM entries WHERE idx IN ({marks})"  # noqa: S608
        for index, leaf in db.execute(sql, leaves):
            found[(0, int(index))] = _blob(leaf)
    if ids:
        marks = ",".join("?" * len(ids))
        sql = f"SELECT id, hash FROM nodes WHERE id IN ({marks})"  # noqa: S608
        for nid, h in db.execute(sql, ids):
            nid = int(nid)
            found[(nid >> _INDEX_BITS, nid & (MAX_LOG_SIZE - 1))] = _blob(h)
    return ordered(keys, found)


def ordered(keys: Sequence[NodeKey], found: dict[NodeKey, bytes]) -> list[bytes]:
    """``found``'s hashes in the order of ``keys``; a key it lacks is a missing node."""
    out = []
    for key in keys:
        if key not in found:
            raise _missing(str(key))
        out.append(found[key])
    return out


def _blob(value: object) -> bytes:
    # Someone editing the file may store TEXT where a BLOB was; treat it as the bytes it is.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise AuditError("audit.entry_tampered", f"stored value of type {type(value).__name__}")
