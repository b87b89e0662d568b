"""The records store in PostgreSQL: :class:`PostgresRecordStore`, sealed rows only.

The same rows as the SQLite store (tenant, row id, chunk number, AES-256-GCM ciphertext), the
same contract (:class:`~.store.RecordStore`: :meth:`replace` is one transaction), versioned by
:mod:`medclave.postgres.migrations`.

No vectors in the clear, so no pgvector here. A chunk's embedding is sealed inside its row, and
the index (vectors and BM25) is rebuilt in enclave memory at boot (records/index.py), as with
SQLite. Stored as a ``vector`` column, an embedding of a public model (all-MiniLM-L6-v2) would
give the database's operator what the sealing withholds: embedding inversion recovers much of a
short text from its vector (Morris et al., "Text Embeddings Reveal (Almost) As Much As Text",
EMNLP 2023), and anyone can embed "HIV positive" and ask pgvector for the nearest rows, which
names the patients' resources (row ids) that mention it. docs/scaling-out.md says more.

Several replicas: each builds its index from the rows at boot, and each ingest rewrites the
tenant's sealed manifest from what that replica knows. So that a replica never overwrites a
manifest it has not read (the next boot would refuse the store as tampered), :meth:`replace`
takes a per-tenant advisory lock and refuses with ``records.store_conflict`` when the stored
manifest is not the one this store last read or wrote for the tenant: another replica
ingested since. Nothing is written then; the deployment ingests through one replica, or
restarts the others to load the new rows.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from medclave.errors import RecordsError
from medclave.postgres import migrations
from medclave.records.store import MANIFEST_CHUNK, SealedRow

STORE = "records"
Conn = psycopg.Connection[tuple[object, ...]]
_LOCK_CLASS = 0x6D637263  # "mcrc": the advisory-lock class of the records' tenants

MIGRATIONS = (migrations.Migration(1, "sealed record rows", migrations.script(
    "CREATE TABLE records_sealed (tenant TEXT NOT NULL, row TEXT NOT NULL, "
    "chunk INTEGER NOT NULL, blob BYTEA NOT NULL, PRIMARY KEY (tenant, row, chunk))")),)


class PostgresRecordStore:
    def __init__(self, where: str | ConnectionPool, *, allow_remote: bool = False) -> None:
        """``where``: a ``postgresql://`` URL (the store opens and closes its pool) or an
        open pool (the caller's to close)."""
        self._pool, self._own = migrations.migrated_pool(
            where, store=STORE, migrations=MIGRATIONS, allow_remote=allow_remote)
        self._manifests: dict[str, bytes | None] = {}  # tenant -> the manifest blob last seen
        self._seen = threading.Lock()

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        with self._pool.connection() as conn:
            yield conn

    def tenants(self) -> list[str]:
        with self._conn() as conn:
            return [str(r[0]) for r in conn.execute("SELECT DISTINCT tenant FROM records_sealed "
                                                    "ORDER BY tenant")]

    def rows(self, tenant: str) -> Iterator[SealedRow]:
        with self._conn() as conn:
            found = conn.execute("SELECT row, chunk, blob FROM records_sealed WHERE tenant = %s "
                                 "ORDER BY row, chunk", (tenant,)).fetchall()
        manifest = None
        out = []
        for row, chunk, blob in found:
            sealed = SealedRow(tenant, str(row), int(str(chunk)), _bytes(blob))
            if sealed.chunk == MANIFEST_CHUNK:
                manifest = sealed.blob
            out.append(sealed)
        with self._seen:
            self._manifests[tenant] = manifest
        yield from out

    def replace(self, tenant: str, drop: Sequence[str], rows: Sequence[SealedRow]) -> None:
        written = next((r.blob for r in rows if r.chunk == MANIFEST_CHUNK), None)
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _key(tenant)))
            stored = conn.execute("SELECT blob FROM records_sealed WHERE tenant = %s AND "
                                  "chunk = %s", (tenant, MANIFEST_CHUNK)).fetchone()
            with self._seen:
                last = self._manifests.get(tenant)
            if (None if stored is None else _bytes(stored[0])) != last:
                raise RecordsError("records.store_conflict", f"tenant {tenant}: the sealed "
                                   "manifest changed since this replica read it")
            with conn.cursor() as cur:
                cur.execute("DELETE FROM records_sealed WHERE tenant = %s AND row = ANY(%s)",
                            (tenant, list(drop)))
                cur.executemany(
                    "INSERT INTO records_sealed VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, "
                    "row, chunk) DO UPDATE SET blob = EXCLUDED.blob",
                    [(r.tenant, r.row, r.chunk, r.blob) for r in rows])
        if written is not None:
            with self._seen:
                self._manifests[tenant] = written

    def close(self) -> None:
        if self._own:
            self._pool.close()


def _key(tenant: str) -> int:
    return zlib.crc32(tenant.encode()) - (1 << 31)


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise RecordsError("records.store_tampered", f"stored value of type {type(value).__name__}")
