"""The SQLite key-broker store's schema and its versions (:mod:`medclave.kbs.sqlite_store`).

Schema versions (:mod:`medclave.migrations`: checked before any write, a newer one refused
untouched, forward migrations in one transaction, recorded in ``schema_version``):

1. the tables (owner tokens, resources and versions, policies and versions, nonces, decisions);
2. decision-log retention (:mod:`medclave.kbs.store`): ``decisions`` gained ``count`` and
   ``bucket`` (the aggregate key's minute; NULL for a permanent row); schema-1 rows become
   permanent rows with a count of one;
3. revocation lists (:mod:`medclave.kbs.revocation`): the ``revocations`` table.

Stores written before ``schema_version`` kept their version in ``meta`` (``schema`` = "1" or
"2"); that is read as their version. Some schema-1 stores predate the ``actor`` column; migration
2 adds it where it is missing (the one column check left, for that known history). ``meta``
still says the version, so a release before this one opens a store it can read and refuses one
it cannot.
"""

from __future__ import annotations

import sqlite3

from medclave import migrations
from medclave.errors import KbsError

# Schema 1 as it was released (decisions with actor; no count, no bucket).
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE owner_tokens (
    token_hash BLOB PRIMARY KEY, owner TEXT NOT NULL, created TEXT NOT NULL);
CREATE INDEX owner_tokens_owner ON owner_tokens (owner);
CREATE TABLE resources (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, current INTEGER NOT NULL);
CREATE TABLE secret_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, wrapped BLOB NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE policies (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, current INTEGER NOT NULL);
CREATE TABLE policy_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL, digest TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE nonces (
    nonce BLOB PRIMARY KEY, expires_at REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE INDEX nonces_expiry ON nonces (expires_at);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, action TEXT NOT NULL,
    resource TEXT NOT NULL, owner TEXT NOT NULL, outcome TEXT NOT NULL, client TEXT NOT NULL,
    code TEXT, version INTEGER, detail TEXT NOT NULL, policy_digest TEXT NOT NULL,
    evidence_sha256 TEXT NOT NULL, checks TEXT NOT NULL, actor TEXT NOT NULL DEFAULT '');
CREATE INDEX decisions_owner ON decisions (owner, id);
INSERT INTO meta VALUES ('schema', '1');
"""
_SCHEMA_2 = """
ALTER TABLE decisions ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE decisions ADD COLUMN bucket TEXT;
CREATE INDEX decisions_actor ON decisions (actor, id);
CREATE UNIQUE INDEX decisions_aggregate
    ON decisions (bucket, action, resource, code, client) WHERE bucket IS NOT NULL;
CREATE INDEX decisions_aggregated ON decisions (id) WHERE bucket IS NOT NULL;
UPDATE meta SET value = '2' WHERE key = 'schema';
"""
_ACTOR = "ALTER TABLE decisions ADD COLUMN actor TEXT NOT NULL DEFAULT ''"
_RETENTION = migrations.script(_SCHEMA_2)


def _retention(db: sqlite3.Connection) -> None:
    if "actor" not in {r[1] for r in db.execute("PRAGMA table_info(decisions)")}:
        db.execute(_ACTOR)  # a schema-1 store from before the actor column
    _RETENTION(db)


_SCHEMA_3 = """
CREATE TABLE revocations (
    owner TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (owner, kind, value));
UPDATE meta SET value = '3' WHERE key = 'schema';
"""

MIGRATIONS = (
    migrations.Migration(1, "broker tables", migrations.script(_SCHEMA_1)),
    migrations.Migration(2, "decision-log retention: count and bucket", _retention),
    migrations.Migration(3, "revocation lists (continuous trust)", migrations.script(_SCHEMA_3)),
)


def legacy_version(db: sqlite3.Connection) -> int:
    """A store from before ``schema_version``: its ``meta`` row (empty database: 0)."""
    if "meta" not in migrations.tables(db):
        return 0
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None or not str(row[0]).isdigit():
        # Tables without a version: not a store this code wrote; never guess.
        raise KbsError("kbs.unavailable", "store has no schema version")
    return int(row[0])
