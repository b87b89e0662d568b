"""The durable log stores, one interface for the tests that run against each: SQLite and
PostgreSQL. ``execute`` takes SQLite's spelling (tables ``entries``, ``nodes``, ``checkpoints``,
``?`` parameters) and translates it for PostgreSQL, so a tamper test is written once."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg

from medclave.audit.pgstore import PostgresLogStore
from medclave.audit.store import MAX_LOG_SIZE, LogStore, SqliteLogStore

LOG = "test-log"
_TABLES = re.compile(r"\b(entries|nodes|checkpoints|meta)\b")


@dataclass
class Backend:
    name: str  # "sqlite" | "postgres"
    where: str  # the SQLite file, or the database URL

    def open(self, *, readonly: bool = False) -> LogStore:
        if self.name == "sqlite":
            return SqliteLogStore(self.where, readonly=readonly)
        return PostgresLogStore(self.where, log=LOG, readonly=readonly)

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """One statement with the append-only triggers out of the way (what the database's
        owner can do), committed."""
        if self.name == "sqlite":
            db = sqlite3.connect(self.where)
            try:
                for t in ("entries", "nodes", "checkpoints"):
                    for op in ("update", "delete"):
                        db.execute(f"DROP TRIGGER IF EXISTS {t}_append_only_{op}")
                rows = db.execute(sql, args).fetchall()
                db.commit()
                return rows
            finally:
                db.close()
        with psycopg.connect(self.where, autocommit=True) as conn:
            for t in ("audit_entries", "audit_nodes", "audit_checkpoints"):
                conn.execute(f"ALTER TABLE {t} DISABLE TRIGGER USER")
            cur = conn.execute(_TABLES.sub(r"audit_\1", sql).replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []

    def read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """A read, triggers left alone."""
        if self.name == "sqlite":
            db = sqlite3.connect(self.where)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()
        with psycopg.connect(self.where, autocommit=True) as conn:
            return conn.execute(_TABLES.sub(r"audit_\1", sql).replace("?", "%s"), args).fetchall()


def truncate(db: Backend, keep: int) -> None:
    """_builders.truncate_log on either store: keep the first ``keep`` entries and drop every
    checkpoint and node that covers a later one, so nothing dangles."""
    db.execute("DELETE FROM entries WHERE idx >= ?", (keep,))
    db.execute("DELETE FROM checkpoints WHERE size > ?", (keep,))
    for (nid,) in db.read("SELECT id FROM nodes"):
        assert isinstance(nid, int)
        if (nid % MAX_LOG_SIZE + 1) << (nid // MAX_LOG_SIZE) > keep:
            db.execute("DELETE FROM nodes WHERE id = ?", (nid,))


def backend(name: str, tmp_path: Path, pg_url: str | None) -> Backend:
    if name == "sqlite":
        return Backend("sqlite", str(tmp_path / "audit.sqlite3"))
    assert pg_url is not None
    return Backend("postgres", pg_url)
