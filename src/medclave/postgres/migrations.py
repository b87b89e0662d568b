"""Versioned schema migrations for the PostgreSQL stores: :mod:`medclave.migrations`'s discipline.

Every store's tables live in one database; each store records its versions in the shared
``medclave_schema`` table under its own name. Opening a store:

1. reads the store's version, by reads only (0 when the table or its rows are absent);
2. refuses a version above the newest this release knows (``service.schema_newer``) before any
   write, so the newer release that wrote it can still open the database;
3. otherwise, in one transaction holding a transaction-scoped advisory lock keyed by the store's
   name (``pg_advisory_xact_lock``: two replicas starting together serialize here instead of both
   running the DDL), reads the version again, applies each later migration in order and records
   it. PostgreSQL's DDL is transactional, so a crash leaves the old version or the new one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from medclave.errors import ServiceError

VERSION_TABLE = "medclave_schema"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (store TEXT NOT NULL, version INTEGER "
           "NOT NULL, applied_at TEXT NOT NULL, description TEXT NOT NULL, "
           "PRIMARY KEY (store, version))")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[psycopg.Connection[tuple[object, ...]]], None]


def script(sql: str) -> Callable[[psycopg.Connection[tuple[object, ...]]], None]:
    """A migration that runs ``sql`` (statements separated by ``;`` at line ends; no function
    bodies with inner semicolons: write those as their own :class:`Migration` callable)."""
    statements = [s.strip() for s in sql.split(";\n") if s.strip().strip(";").strip()]

    def run(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        for statement in statements:
            conn.execute(statement.rstrip(";"))
    return run


def newest(migrations: Sequence[Migration]) -> int:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError("migrations are numbered 1, 2, 3 … in order")
    return len(versions)


def current_version(conn: psycopg.Connection[tuple[object, ...]], store: str) -> int:
    """The store's schema version, by reads only."""
    exists = conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute(f"SELECT MAX(version) FROM {VERSION_TABLE} WHERE store = %s",  # noqa: S608
                       (store,)).fetchone()
    return int(str(row[0])) if row is not None and row[0] is not None else 0


def check_version(conn: psycopg.Connection[tuple[object, ...]], *, store: str,
                  migrations: Sequence[Migration]) -> int:
    found, known = current_version(conn, store), newest(migrations)
    if found > known:
        raise ServiceError("service.schema_newer", f"{store} store schema {found}; this release "
                           f"knows up to {known}")
    return found


def lock_key(store: str) -> int:
    """The advisory-lock key of a store: a stable signed 32-bit number from its name."""
    return zlib.crc32(b"medclave-schema:" + store.encode()) - (1 << 31)


def migrate(conn: psycopg.Connection[tuple[object, ...]], *, store: str,
            migrations: Sequence[Migration]) -> int:
    """Bring ``store``'s tables to the newest version (``conn`` in autocommit mode); returns it."""
    check_version(conn, store=store, migrations=migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(store),))
        conn.execute(_CREATE)
        found = check_version(conn, store=store, migrations=migrations)
        for migration in migrations:
            if migration.version > found:
                migration.apply(conn)
                conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES (%s, %s, %s, %s)",  # noqa: S608
                             (store, migration.version, datetime.now(UTC).isoformat(),
                              migration.description))
    return newest(migrations)
