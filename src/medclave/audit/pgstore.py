"""The audit log in PostgreSQL: :class:`PostgresLogStore`, the :class:`~.store.LogStore` shared
by enclave replicas.

One database holds any number of logs, each under its name (the enclave names a log by its
origin and key, as it names the SQLite files). The tables and the discipline are the SQLite
store's: entries with their leaf hashes, every perfect subtree, the signed checkpoints, all
append-only by triggers (``UPDATE``, ``DELETE`` and ``TRUNCATE`` raise), versioned by
:mod:`medclave.postgres.migrations` (a newer schema is refused before anything is written).

Several writers: :meth:`PostgresLogStore.transaction` is one database transaction holding a
transaction-scoped advisory lock on the log's name (``pg_advisory_xact_lock``, released by
the commit or by the server when a killed writer's connection drops), so the writers of one
log (processes, machines) take turns and every batch sees every batch committed before it.
``synchronous_commit`` stays at the server's default (``on``): a batch is acknowledged after
its WAL record is flushed. As for SQLite, the store is trusted for nothing:
:func:`medclave.audit.verify.verify_log` recomputes everything, and a writer verifies a head
it did not write (:mod:`medclave.audit.log`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from medclave.audit.merkle import NodeKey
from medclave.audit.store import (
    _INDEX_BITS,
    MAX_LOG_SIZE,
    Batch,
    LogTransaction,
    _conflict,
    node_id,
    ordered,
)
from medclave.errors import AuditError
from medclave.postgres import migrations
from medclave.postgres.pool import open_pool

STORE = "audit"
_PAGE = 2048  # rows per read of a streamed scan (keyset pages: no cursor held open)
# The advisory-lock class of audit logs (the two-key form: the schema migrations use the
# one-key form, a separate space, so the two never collide).
_LOCK_CLASS = 0x6D636175  # "mcau"

_SCHEMA = """
CREATE TABLE audit_meta (log TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (log, key));
CREATE TABLE audit_entries (log TEXT NOT NULL, idx BIGINT NOT NULL, leaf BYTEA NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (log, idx));
CREATE TABLE audit_nodes (log TEXT NOT NULL, id BIGINT NOT NULL, hash BYTEA NOT NULL,
    PRIMARY KEY (log, id));
CREATE TABLE audit_checkpoints (log TEXT NOT NULL, size BIGINT NOT NULL, note BYTEA NOT NULL,
    PRIMARY KEY (log, size))
"""
# Append-only by construction, as in SQLite: a bug in a writer cannot rewrite history. The
# database's owner can drop the triggers, which is why verification recomputes everything.
_REFUSE = """
CREATE FUNCTION medclave_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$
"""


def _guards(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(_REFUSE)
    for table in ("audit_entries", "audit_nodes", "audit_checkpoints"):
        conn.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                     "FOR EACH ROW EXECUTE FUNCTION medclave_audit_append_only()")
        conn.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                     "FOR EACH STATEMENT EXECUTE FUNCTION medclave_audit_append_only()")


MIGRATIONS = (
    migrations.Migration(1, "audit log tables", migrations.script(_SCHEMA)),
    migrations.Migration(2, "append-only triggers", _guards),
)

Conn = psycopg.Connection[tuple[object, ...]]


def lock_key(log: str) -> int:
    """The log's advisory-lock key (signed 32-bit, from its name)."""
    return zlib.crc32(log.encode()) - (1 << 31)


class PostgresLogStore:
    """The log named ``log`` in the database at ``url`` (or on an open ``pool``, which the
    caller then closes). ``readonly``: for auditors; checks the schema version, writes nothing.
    """

    def __init__(self, url: str | None = None, *, log: str, pool: ConnectionPool | None = None,
                 readonly: bool = False, allow_remote: bool = False) -> None:
        if (url is None) == (pool is None):
            raise ValueError("give url or pool")
        if not log or len(log) > 256:
            raise AuditError("audit.entry_invalid", "a log name has 1 to 256 characters")
        self.log = log
        self.readonly = readonly
        self._own = pool is None
        self._pool = pool if pool is not None else open_pool(
            url or "", max_size=4, allow_remote=allow_remote)
        try:
            with self._pool.connection() as conn:
                if readonly:
                    migrations.check_version(conn, store=STORE, migrations=MIGRATIONS)
                    if migrations.current_version(conn, STORE) == 0 or conn.execute(
                            "SELECT 1 FROM audit_meta WHERE log = %s LIMIT 1",
                            (log,)).fetchone() is None:
                        raise AuditError("audit.entry_missing", f"no audit log {log!r} in this "
                                         "database")
                else:
                    migrations.migrate(conn, store=STORE, migrations=MIGRATIONS)
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        with self._pool.connection() as conn:
            yield conn

    def _one(self, sql: str, args: Sequence[object]) -> tuple[object, ...] | None:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchone()

    @contextmanager
    def transaction(self) -> Iterator[LogTransaction]:
        if self.readonly:
            raise AuditError("audit.log_conflict", "this log was opened read-only")
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, lock_key(self.log)))
            yield _Transaction(conn, self.log)

    def size(self) -> int:
        with self._conn() as conn:
            return _size(conn, self.log)

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM audit_meta WHERE log = %s AND key = %s",
                        (self.log, key))
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._conn() as conn:
            conn.execute("INSERT INTO audit_meta VALUES (%s, %s, %s) ON CONFLICT (log, key) "
                         "DO UPDATE SET value = EXCLUDED.value", (self.log, key, value))

    def commit(self, batch: Batch) -> None:
        with self.transaction() as tx:
            tx.commit(batch)

    def add_checkpoint(self, size: int, note: bytes) -> None:
        with self._conn() as conn:
            _add_checkpoint(conn, self.log, size, note)

    def entry(self, index: int) -> tuple[bytes, bytes] | None:
        row = self._one("SELECT data, leaf FROM audit_entries WHERE log = %s AND idx = %s",
                        (self.log, index))
        return None if row is None else (_blob(row[0]), _blob(row[1]))

    def entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes]]:
        for index, data, leaf in self._pages(
                "SELECT idx, data, leaf FROM audit_entries WHERE log = %s AND idx >= %s "
                "ORDER BY idx LIMIT %s", start, None):
            yield int(str(index)), _blob(data), _blob(leaf)

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        with self._conn() as conn:
            return _nodes(conn, self.log, keys)

    def level(self, level: int) -> Iterator[tuple[int, bytes]]:
        for nid, h in self._pages(
                "SELECT id, hash FROM audit_nodes WHERE log = %s AND id >= %s AND id < %s "
                "ORDER BY id LIMIT %s", node_id(level, 0), node_id(level + 1, 0)):
            yield int(str(nid)) & (MAX_LOG_SIZE - 1), _blob(h)

    def checkpoints(self) -> Iterator[tuple[int, bytes]]:
        for size, note in self._pages(
                "SELECT size, note FROM audit_checkpoints WHERE log = %s AND size >= %s "
                "ORDER BY size LIMIT %s", 0, None):
            yield int(str(size)), _blob(note)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        with self._conn() as conn:
            return _latest(conn, self.log)

    def close(self) -> None:
        if self._own:
            self._pool.close()

    def _pages(self, sql: str, start: int, stop: int | None) -> Iterator[tuple[object, ...]]:
        """Rows in key order, a page at a time (``sql`` takes log, start[, stop], limit):
        a log bigger than memory streams, and no connection is held between pages."""
        while True:
            args: tuple[object, ...] = ((self.log, start, _PAGE) if stop is None
                                        else (self.log, start, stop, _PAGE))
            with self._conn() as conn:
                rows = conn.execute(sql, args).fetchall()
            yield from rows
            if len(rows) < _PAGE:
                return
            start = int(str(rows[-1][0])) + 1


class _Transaction:
    """Reads and the batch write on the connection holding the log's advisory lock."""

    def __init__(self, conn: Conn, log: str) -> None:
        self._conn = conn
        self._log = log
        self._size: int | None = None  # read under the lock: nobody else can change it

    def size(self) -> int:
        if self._size is None:
            self._size = _size(self._conn, self._log)
        return self._size

    def nodes(self, keys: Sequence[NodeKey]) -> list[bytes]:
        return _nodes(self._conn, self._log, keys)

    def latest_checkpoint(self) -> tuple[int, bytes] | None:
        return _latest(self._conn, self._log)

    def commit(self, batch: Batch) -> None:
        conn, log = self._conn, self._log
        size = self.size()
        if size != batch.first:
            raise _conflict(batch.first, size)
        # One round trip for the whole batch (psycopg's pipeline mode): on a loaded machine
        # each round trip to the server costs more than the rows themselves.
        with conn.pipeline(), conn.cursor() as cur:
            if batch.entries:
                cur.execute("INSERT INTO audit_entries SELECT %s, * FROM unnest(%s::bigint[], "
                            "%s::bytea[], %s::bytea[])",
                            (log, list(range(batch.first, batch.first + len(batch.entries))),
                             list(batch.leaves), [bytes(d) for d in batch.entries]))
            if batch.nodes:
                cur.execute("INSERT INTO audit_nodes SELECT %s, * FROM unnest(%s::bigint[], "
                            "%s::bytea[])", (log, [node_id(lv, i) for lv, i, _ in batch.nodes],
                                             [h for _, _, h in batch.nodes]))
            if batch.checkpoint is not None:
                _add_checkpoint(conn, log, *batch.checkpoint)
        self._size = size + len(batch.entries)


def _size(conn: Conn, log: str) -> int:
    row = conn.execute("SELECT MAX(idx) FROM audit_entries WHERE log = %s", (log,)).fetchone()
    return 0 if row is None or row[0] is None else int(str(row[0])) + 1


def _latest(conn: Conn, log: str) -> tuple[int, bytes] | None:
    row = conn.execute("SELECT size, note FROM audit_checkpoints WHERE log = %s "
                       "ORDER BY size DESC LIMIT 1", (log,)).fetchone()
    return None if row is None else (int(str(row[0])), _blob(row[1]))


def _add_checkpoint(conn: Conn, log: str, size: int, note: bytes) -> None:
    conn.execute("INSERT INTO audit_checkpoints VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                 (log, size, note))


def _nodes(conn: Conn, log: str, keys: Sequence[NodeKey]) -> list[bytes]:
    leaves = [i for lvl, i in keys if lvl == 0]
    ids = [node_id(lvl, i) for lvl, i in keys if lvl > 0]
    found: dict[NodeKey, bytes] = {}
    if leaves:
        for index, leaf in conn.execute("SELECT idx, leaf FROM audit_entries WHERE log = %s "
                                        "AND idx = ANY(%s)", (log, leaves)):
            found[(0, int(str(index)))] = _blob(leaf)
    if ids:
        for raw, h in conn.execute("SELECT id, hash FROM audit_nodes WHERE log = %s AND "
                                   "id = ANY(%s)", (log, ids)):
            nid = int(str(raw))
            found[(nid >> _INDEX_BITS, nid & (MAX_LOG_SIZE - 1))] = _blob(h)
    return ordered(keys, found)


def _blob(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise AuditError("audit.entry_tampered", f"stored value of type {type(value).__name__}")
