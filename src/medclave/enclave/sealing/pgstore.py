"""Sealed conversations in PostgreSQL: :class:`PostgresSealedStore`, shared by enclave replicas.

The same rows as the SQLite store (tenant, the owner's pseudonym, the conversation id, the
sealing-root version, sealed head and turns), the same contract (:class:`~.store.SealedStore`),
versioned by :mod:`medclave.postgres.migrations`. Two replicas appending to one conversation
at once: :meth:`append` updates the head row first, which row-locks it, so the second waits and
then either finds its turn index taken (the primary key refuses it; the caller re-reads) or
appends after the first. A turn is never rewritten: ``UPDATE`` on ``sealed_turns`` is refused
by a trigger (turns go only with their conversation, by ``ON DELETE CASCADE``).

What the database's owner can do is what SQLite's file owner can: drop, reorder, replay, alter
or roll back rows; the sealed format detects each (``sealing.integrity_failed``,
tests/enclave/test_sealing.py runs the same attacks on both). One difference: SQLite's
``secure_delete`` zeroes a deleted conversation's pages, while PostgreSQL leaves dead tuples
(ciphertext) in the table files and the WAL until ``VACUUM`` and WAL recycling reuse them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from medclave.enclave.sealing.store import StoredConversation
from medclave.postgres import migrations

STORE = "sealed"
Conn = psycopg.Connection[tuple[object, ...]]

_SCHEMA = """
CREATE TABLE sealed_conversations (tenant TEXT NOT NULL, conversation TEXT NOT NULL,
    owner TEXT NOT NULL, root_version INTEGER NOT NULL, head BYTEA NOT NULL,
    created BIGSERIAL, PRIMARY KEY (tenant, conversation));
CREATE INDEX sealed_by_owner ON sealed_conversations (tenant, owner, created);
CREATE TABLE sealed_turns (tenant TEXT NOT NULL, conversation TEXT NOT NULL,
    idx INTEGER NOT NULL, record BYTEA NOT NULL, PRIMARY KEY (tenant, conversation, idx),
    FOREIGN KEY (tenant, conversation) REFERENCES sealed_conversations ON DELETE CASCADE)
"""


def _guards(conn: Conn) -> None:
    conn.execute("""
CREATE FUNCTION medclave_sealed_turns_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'sealed turns are never rewritten' USING ERRCODE = 'insufficient_privilege';
END $$""")
    conn.execute("CREATE TRIGGER sealed_turns_fixed BEFORE UPDATE ON sealed_turns FOR EACH ROW "
                 "EXECUTE FUNCTION medclave_sealed_turns_fixed()")


MIGRATIONS = (
    migrations.Migration(1, "sealed conversations and turns", migrations.script(_SCHEMA)),
    migrations.Migration(2, "turns are never updated", _guards),
)


class PostgresSealedStore:
    def __init__(self, where: str | ConnectionPool, *, allow_remote: bool = False) -> None:
        """``where``: a ``postgresql://`` URL (the store opens and closes its pool) or an
        open pool (the caller's to close)."""
        self._pool, self._own = migrations.migrated_pool(
            where, store=STORE, migrations=MIGRATIONS, allow_remote=allow_remote)

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        with self._pool.connection() as conn:
            yield conn

    @staticmethod
    def _row(r: tuple[object, ...]) -> StoredConversation:
        return StoredConversation(str(r[0]), str(r[1]), str(r[2]), int(str(r[3])),
                                  _bytes(r[4]))

    _COLUMNS = "tenant, owner, conversation, root_version, head"

    def create(self, row: StoredConversation) -> None:
        with self._conn() as conn:
            try:
                conn.execute("INSERT INTO sealed_conversations (tenant, conversation, owner, "
                             "root_version, head) VALUES (%s, %s, %s, %s, %s)",
                             (row.tenant, row.conversation, row.owner, row.root_version,
                              row.head))
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError("conversation id already used") from exc

    def get(self, tenant: str, owner: str, conversation: str) -> StoredConversation | None:
        with self._conn() as conn:
            r = conn.execute(f"SELECT {self._COLUMNS} FROM sealed_conversations WHERE "  # noqa: S608
                             "tenant = %s AND conversation = %s AND owner = %s",
                             (tenant, conversation, owner)).fetchone()
        return None if r is None else self._row(r)

    def turns(self, tenant: str, conversation: str) -> list[tuple[int, bytes]]:
        with self._conn() as conn:
            rows = conn.execute("SELECT idx, record FROM sealed_turns WHERE tenant = %s AND "
                                "conversation = %s ORDER BY idx", (tenant, conversation))
            return [(int(str(i)), _bytes(r)) for i, r in rows.fetchall()]

    def append(self, tenant: str, owner: str, conversation: str, index: int, record: bytes,
               head: bytes) -> None:
        with self._conn() as conn:
            try:
                with conn.transaction():
                    updated = conn.execute(
                        "UPDATE sealed_conversations SET head = %s WHERE tenant = %s AND "
                        "conversation = %s AND owner = %s",
                        (head, tenant, conversation, owner)).rowcount
                    if updated != 1:
                        raise ValueError("no such conversation for this owner")
                    conn.execute("INSERT INTO sealed_turns VALUES (%s, %s, %s, %s)",
                                 (tenant, conversation, index, record))
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError("not this owner's, or the index is taken") from exc

    def versions(self, tenant: str) -> list[int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT DISTINCT root_version FROM sealed_conversations WHERE "
                                "tenant = %s ORDER BY root_version", (tenant,)).fetchall()
        return [int(str(r[0])) for r in rows]

    def owned(self, tenant: str, owner: str) -> list[StoredConversation]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {self._COLUMNS} FROM sealed_conversations WHERE "  # noqa: S608
                                "tenant = %s AND owner = %s ORDER BY created",
                                (tenant, owner)).fetchall()
        return [self._row(r) for r in rows]

    def delete(self, tenant: str, owner: str, conversation: str) -> bool:
        with self._conn() as conn:
            done = conn.execute("DELETE FROM sealed_conversations WHERE tenant = %s AND "
                                "conversation = %s AND owner = %s",
                                (tenant, conversation, owner)).rowcount
        return done == 1

    def close(self) -> None:
        if self._own:
            self._pool.close()


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"stored value of type {type(value).__name__}")
