"""Where sealed conversations rest: an interface, in memory, and SQLite (WAL) on disk.

The store holds only what the operator may see: the tenant, the owner's pseudonym (an HMAC
under a key derived from the sealing root, :func:`~.format.owner_pseudonym`), the conversation
id, the sealing-root version, and sealed records (the head and the turns). It never sees a
share, a key or a plaintext. A PostgreSQL store implements the same :class:`SealedStore`.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StoredConversation:
    tenant: str
    owner: str
    conversation: str
    root_version: int
    head: bytes


class SealedStore(Protocol):
    def create(self, row: StoredConversation) -> None: ...

    def get(self, tenant: str, owner: str, conversation: str) -> StoredConversation | None: ...

    def turns(self, tenant: str, conversation: str) -> list[tuple[int, bytes]]:
        """``(index, record)`` in index order."""
        ...

    def append(self, tenant: str, owner: str, conversation: str, index: int, record: bytes,
               head: bytes) -> None:
        """Add turn ``index`` and replace the head, both or neither."""
        ...

    def versions(self, tenant: str) -> list[int]:
        """The sealing-root versions the tenant's conversations are sealed under."""
        ...

    def owned(self, tenant: str, owner: str) -> list[StoredConversation]: ...

    def delete(self, tenant: str, owner: str, conversation: str) -> bool: ...

    def close(self) -> None: ...


class MemorySealedStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], StoredConversation] = {}
        self._turns: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
        self._lock = threading.Lock()

    def create(self, row: StoredConversation) -> None:
        with self._lock:
            key = (row.tenant, row.conversation)
            if key in self._rows:
                raise ValueError("conversation id already used")
            self._rows[key] = row
            self._turns[key] = []

    def get(self, tenant: str, owner: str, conversation: str) -> StoredConversation | None:
        with self._lock:
            row = self._rows.get((tenant, conversation))
            return row if row is not None and row.owner == owner else None

    def turns(self, tenant: str, conversation: str) -> list[tuple[int, bytes]]:
        with self._lock:
            return sorted(self._turns.get((tenant, conversation), []))

    def append(self, tenant: str, owner: str, conversation: str, index: int, record: bytes,
               head: bytes) -> None:
        with self._lock:
            key = (tenant, conversation)
            row = self._rows[key]
            if row.owner != owner or any(i == index for i, _ in self._turns[key]):
                raise ValueError("not this owner's, or the index is taken")
            self._turns[key].append((index, record))
            self._rows[key] = StoredConversation(tenant, owner, conversation, row.root_version,
                                                 head)

    def versions(self, tenant: str) -> list[int]:
        with self._lock:
            return sorted({r.root_version for r in self._rows.values() if r.tenant == tenant})

    def owned(self, tenant: str, owner: str) -> list[StoredConversation]:
        with self._lock:
            return [r for r in self._rows.values() if r.tenant == tenant and r.owner == owner]

    def delete(self, tenant: str, owner: str, conversation: str) -> bool:
        with self._lock:
            key = (tenant, conversation)
            row = self._rows.get(key)
            if row is None or row.owner != owner:
                return False
            del self._rows[key]
            self._turns.pop(key, None)
            return True

    def close(self) -> None:
        pass


class SqliteSealedStore:
    """One SQLite file (WAL, ``secure_delete`` on so a deleted conversation's pages are zeroed
    rather than left in the file). One connection behind a lock: turns are small and the
    engine, not the store, is the bottleneck."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(f"sealed store schema {version} is newer than this code")
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS conversations (
                    tenant TEXT NOT NULL, conversation TEXT NOT NULL, owner TEXT NOT NULL,
                    root_version INTEGER NOT NULL, head BLOB NOT NULL,
                    PRIMARY KEY (tenant, conversation));
                CREATE INDEX IF NOT EXISTS by_owner ON conversations (tenant, owner);
                CREATE TABLE IF NOT EXISTS turns (
                    tenant TEXT NOT NULL, conversation TEXT NOT NULL, idx INTEGER NOT NULL,
                    record BLOB NOT NULL, PRIMARY KEY (tenant, conversation, idx),
                    FOREIGN KEY (tenant, conversation) REFERENCES conversations
                        ON DELETE CASCADE);
                """)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @staticmethod
    def _row(r: tuple[str, str, str, int, bytes]) -> StoredConversation:
        return StoredConversation(r[0], r[2], r[1], int(r[3]), bytes(r[4]))

    def create(self, row: StoredConversation) -> None:
        with self._lock:
            self._db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?)",
                             (row.tenant, row.conversation, row.owner, row.root_version,
                              row.head))

    def get(self, tenant: str, owner: str, conversation: str) -> StoredConversation | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM conversations WHERE tenant=? AND conversation=?"
                                 " AND owner=?", (tenant, conversation, owner)).fetchone()
        return None if r is None else self._row(r)

    def turns(self, tenant: str, conversation: str) -> list[tuple[int, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT idx, record FROM turns WHERE tenant=? AND "
                                    "conversation=? ORDER BY idx", (tenant, conversation))
            return [(int(i), bytes(r)) for i, r in rows.fetchall()]

    def append(self, tenant: str, owner: str, conversation: str, index: int, record: bytes,
               head: bytes) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                updated = self._db.execute(
                    "UPDATE conversations SET head=? WHERE tenant=? AND conversation=? AND "
                    "owner=?", (head, tenant, conversation, owner)).rowcount
                if updated != 1:
                    raise ValueError("no such conversation for this owner")
                self._db.execute("INSERT INTO turns VALUES (?, ?, ?, ?)",
                                 (tenant, conversation, index, record))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def versions(self, tenant: str) -> list[int]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT root_version FROM conversations WHERE "
                                    "tenant=? ORDER BY root_version", (tenant,)).fetchall()
        return [int(r[0]) for r in rows]

    def owned(self, tenant: str, owner: str) -> list[StoredConversation]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM conversations WHERE tenant=? AND owner=? "
                                    "ORDER BY rowid", (tenant, owner)).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, tenant: str, owner: str, conversation: str) -> bool:
        with self._lock:
            done = self._db.execute("DELETE FROM conversations WHERE tenant=? AND "
                                    "conversation=? AND owner=?",
                                    (tenant, conversation, owner)).rowcount
            if done:
                # Deleted pages are zeroed (secure_delete); fold the WAL back so no copy of
                # the records stays in it either.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return done == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
