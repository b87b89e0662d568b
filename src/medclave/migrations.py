"""Versioned schema migrations for the SQLite stores (broker, audit log, API keys, replay cache).

Each store declares its migrations, numbered from 1 in order, and how to recognise a database
written before versions were recorded (``legacy``). Opening a store then:

1. reads the version, with reads only: the ``schema_version`` table's highest row, else what
   ``legacy`` makes of the existing tables (0 for an empty database);
2. refuses a version above the newest this release knows (``service.schema_newer``) before any
   write: no pragma, no DDL, nothing, so the newer release that wrote it can still open it;
3. otherwise, in one ``BEGIN IMMEDIATE`` transaction, reads the version again (another process
   may have migrated meanwhile), applies each later migration in order and records it in
   ``schema_version`` (version, time, description). SQLite's DDL is transactional, so a crash
   leaves the database at the old version or the new one, never between.

Written by hand: the stores use the standard library's sqlite3 directly, and a migration tool
(Alembic) would bring SQLAlchemy for four small schemas.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from medclave.errors import MedclaveError, ServiceError

VERSION_TABLE = "schema_version"
_CREATE_VERSION_TABLE = (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY "
                         "KEY, applied_at TEXT NOT NULL, description TEXT NOT NULL)")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def script(sql: str) -> Callable[[sqlite3.Connection], None]:
    """A migration that runs ``sql``, statement by statement, inside the open transaction
    (``executescript`` would commit it first)."""
    statements = [s.strip() for s in _split(sql) if s.strip().strip(";").strip()]

    def run(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)
    return run


def _split(sql: str) -> list[str]:
    """The statements of a script: pieces up to a ``;`` joined until SQLite says they make a
    complete statement (``sqlite3.complete_statement``: a trigger's body has ``;`` inside)."""
    out, buffer = [], ""
    for piece in sql.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            out.append(buffer)
            buffer = ""
    return out


def tables(db: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def current_version(db: sqlite3.Connection,
                    legacy: Callable[[sqlite3.Connection], int]) -> int:
    """The database's schema version, by reads only."""
    if VERSION_TABLE in tables(db):
        row = db.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()  # noqa: S608
        return int(row[0]) if row and row[0] is not None else 0
    return legacy(db)


def newest(migrations: Sequence[Migration]) -> int:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError("migrations are numbered 1, 2, 3 … in order")
    return len(versions)


def check_version(db: sqlite3.Connection, *, store: str, migrations: Sequence[Migration],
                  legacy: Callable[[sqlite3.Connection], int]) -> int:
    """The version, refused with ``service.schema_newer`` when above :func:`newest`."""
    found, known = current_version(db, legacy), newest(migrations)
    if found > known:
        raise ServiceError("service.schema_newer", f"{store} store schema {found}; this release "
                           f"knows up to {known}")
    return found


def migrate(db: sqlite3.Connection, *, store: str, migrations: Sequence[Migration],
            legacy: Callable[[sqlite3.Connection], int],
            on_error: Callable[[sqlite3.Error], MedclaveError] | None = None,
            after_check: Callable[[sqlite3.Connection], None] | None = None) -> int:
    """Bring ``db`` (autocommit mode: ``isolation_level=None``) to the newest version; returns
    it. ``after_check`` runs once the version is known to be acceptable and before the
    transaction (pragmas such as ``journal_mode=WAL``, which cannot run inside one)."""
    try:
        check_version(db, store=store, migrations=migrations, legacy=legacy)
        if after_check is not None:
            after_check(db)
        db.execute("BEGIN IMMEDIATE")
        try:
            found = check_version(db, store=store, migrations=migrations, legacy=legacy)
            pending = [m for m in migrations if m.version > found]
            if VERSION_TABLE not in tables(db):
                # First opened by a release that records versions: from now on it is versioned.
                db.execute(_CREATE_VERSION_TABLE)
                if found > 0:
                    _record(db, found, "found: written before versions were recorded")
            for migration in pending:
                migration.apply(db)
                _record(db, migration.version, migration.description)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        if on_error is None:
            raise
        raise on_error(exc) from exc
    return newest(migrations)


def _record(db: sqlite3.Connection, version: int, description: str) -> None:
    db.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?, ?, ?)",  # noqa: S608
               (version, datetime.now(UTC).isoformat(), description))
