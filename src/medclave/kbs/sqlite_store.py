"""The SQLite (WAL) :class:`~medclave.kbs.store.KbsStore`: the embedded default.

Every change is one ``BEGIN IMMEDIATE`` transaction, so a broker killed mid-rotation leaves the
database at the old version or the new one, never between (SQLite's atomic commit, sqlite.org
"Atomic Commit In SQLite"). ``synchronous=FULL``: a committed key survives power loss as well.
One connection, serialised by a lock: the broker's write rate is tiny and this keeps it simple.

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

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medclave import migrations
from medclave.errors import KbsError
from medclave.kbs.names import ResourceName
from medclave.kbs.revocation import MAX_REVOCATIONS_PER_OWNER, Revocation
from medclave.kbs.store import (
    MAX_AGGREGATED_DECISIONS,
    NONCE_MEMORY,
    Decision,
    NonceState,
    PolicyVersion,
    ResourceInfo,
    Rewrap,
    SecretVersion,
    aggregate_key,
    is_aggregated,
)

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


def _legacy_version(db: sqlite3.Connection) -> int:
    """A store from before ``schema_version``: its ``meta`` row (empty database: 0)."""
    if "meta" not in migrations.tables(db):
        return 0
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None or not str(row[0]).isdigit():
        # Tables without a version: not a store this code wrote; never guess.
        raise KbsError("kbs.unavailable", "store has no schema version")
    return int(row[0])


def _hold(path: Path, *, exclusive: bool) -> int:
    """An advisory lock beside the store (``flock(2)`` on ``NAME.lock``), held while it is open:
    shared by every broker and command that opens it, exclusive for a KEK rotation
    (:mod:`medclave.kbs.rekey`), so a rotation never runs beside a broker that would go on
    wrapping new secrets under the old KEK, and a broker never starts during one."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise KbsError("kbs.unavailable", "the store is in use by a running broker or command; "
                       "stop it first" if exclusive else "the store is locked by a KEK "
                       "rotation; start when it is done") from None
    return fd


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _not_found(resource: ResourceName, what: str = "resource") -> KbsError:
    return KbsError("kbs.not_found", f"no {what} {resource}")


class SqliteKbsStore:
    """A :class:`~medclave.kbs.store.KbsStore` in one SQLite file (WAL journal)."""

    def __init__(self, path: Path, *, max_aggregated: int = MAX_AGGREGATED_DECISIONS,
                 exclusive: bool = False) -> None:
        self.path = path
        self._max_aggregated = max_aggregated
        self._lock = threading.Lock()
        try:
            # Wrapped secrets and token hashes: owner-only. SQLite gives its -wal and -shm files
            # the database file's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise KbsError("kbs.unavailable", f"cannot create store {path.name}: {exc}") from exc
        self._flock = _hold(path, exclusive=exclusive)
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            os.close(self._flock)
            raise KbsError("kbs.unavailable", f"cannot open store {path.name}: {exc}") from exc

        def pragmas(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")

        try:
            # The version is read before anything is written; a newer one is refused as it is.
            migrations.migrate(self._db, store="broker", migrations=MIGRATIONS,
                               legacy=_legacy_version, after_check=pragmas,
                               on_error=lambda exc: KbsError(
                                   "kbs.unavailable", f"cannot open store {path.name}: {exc}"))
        except BaseException:
            self._db.close()
            os.close(self._flock)
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it commits, or none of it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise KbsError("kbs.unavailable", f"store busy: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise KbsError("kbs.unavailable", f"store read failed: {exc}") from exc

    # owners
    def add_owner_token(self, owner: str, token_hash: bytes, created: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO owner_tokens VALUES (?, ?, ?)", (token_hash, owner, _ts(created))
            )

    def owner_token_hashes(self, owner: str) -> tuple[bytes, ...]:
        rows = self._read("SELECT token_hash FROM owner_tokens WHERE owner=?", (owner,))
        return tuple(bytes(r[0]) for r in rows)

    def revoke_owner_tokens(self, owner: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM owner_tokens WHERE owner=?", (owner,)).rowcount

    # secrets
    def create_secret(self, resource: ResourceName, wrapped: bytes, created: datetime) -> int:
        name = str(resource)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM resources WHERE name=?", (name,)).fetchone():
                raise KbsError("kbs.conflict", f"{resource} exists; rotate it instead")
            db.execute(
                "INSERT INTO secret_versions VALUES (?, 1, ?, ?)", (name, wrapped, _ts(created))
            )
            db.execute("INSERT INTO resources VALUES (?, ?, 1)", (name, resource.owner))
        return 1

    def rotate_secret(
        self, resource: ResourceName, wrapped: bytes, created: datetime, expected_version: int
    ) -> int:
        name = str(resource)
        with self._tx() as db:
            row = db.execute("SELECT current FROM resources WHERE name=?", (name,)).fetchone()
            if row is None:
                raise _not_found(resource)
            if row[0] != expected_version:
                raise KbsError("kbs.conflict", f"{resource} is at version {row[0]}")
            new = int(row[0]) + 1
            # Both statements or neither: the new key and the pointer to it commit together.
            db.execute(
                "INSERT INTO secret_versions VALUES (?, ?, ?, ?)",
                (name, new, wrapped, _ts(created)),
            )
            db.execute("UPDATE resources SET current=? WHERE name=?", (new, name))
        return new

    def secret_version(self, resource: ResourceName, version: int | None = None) -> SecretVersion:
        name = str(resource)
        with self._lock:
            cur = self._db.execute("SELECT current FROM resources WHERE name=?", (name,)).fetchone()
            if cur is None:
                raise _not_found(resource)
            row = self._db.execute(
                "SELECT wrapped, created FROM secret_versions WHERE name=? AND version=?",
                (name, cur[0] if version is None else version),
            ).fetchone()
        if row is None:
            raise _not_found(resource, f"version {version} of")
        return SecretVersion(
            name, int(cur[0] if version is None else version), bytes(row[0]), _dt(row[1])
        )

    def resource_info(self, resource: ResourceName) -> ResourceInfo | None:
        name = str(resource)
        rows = self._read("SELECT current FROM resources WHERE name=?", (name,))
        if not rows:
            return None
        versions = self._read(
            "SELECT version FROM secret_versions WHERE name=? ORDER BY version", (name,)
        )
        return ResourceInfo(name, int(rows[0][0]), tuple(int(v[0]) for v in versions))

    def list_resources(self, owner: str) -> list[ResourceInfo]:
        rows = self._read(
            "SELECT r.name, r.current, group_concat(v.version) FROM resources r "
            "JOIN secret_versions v ON v.name = r.name WHERE r.owner=? GROUP BY r.name "
            "ORDER BY r.name",
            (owner,),
        )
        return [
            ResourceInfo(
                str(r[0]),
                int(r[1]),
                tuple(sorted(int(x) for x in str(r[2]).split(","))),
            )
            for r in rows
        ]

    def retire_secret_version(self, resource: ResourceName, version: int) -> None:
        self._retire("resources", "secret_versions", resource, version)

    def delete_resource(self, resource: ResourceName) -> None:
        name = str(resource)
        with self._tx() as db:
            if db.execute("DELETE FROM resources WHERE name=?", (name,)).rowcount == 0:
                raise _not_found(resource)
            db.execute("DELETE FROM secret_versions WHERE name=?", (name,))
            db.execute("DELETE FROM policies WHERE name=?", (name,))
            db.execute("DELETE FROM policy_versions WHERE name=?", (name,))

    def _retire(self, head: str, table: str, resource: ResourceName, version: int) -> None:
        name = str(resource)
        with self._tx() as db:
            row = db.execute(f"SELECT current FROM {head} WHERE name=?", (name,)).fetchone()  # noqa: S608 - fixed table names
            if row is None:
                raise _not_found(resource)
            if row[0] == version:
                raise KbsError(
                    "kbs.conflict", "the current version cannot be retired; rotate first"
                )
            deleted = db.execute(
                f"DELETE FROM {table} WHERE name=? AND version=?",  # noqa: S608
                (name, version),
            ).rowcount
            if deleted == 0:
                raise _not_found(resource, f"version {version} of")

    # policies
    def put_policy(
        self,
        resource: ResourceName,
        document: str,
        digest: str,
        created: datetime,
        expected_version: int | None = None,
    ) -> int:
        name = str(resource)
        with self._tx() as db:
            row = db.execute("SELECT current FROM policies WHERE name=?", (name,)).fetchone()
            current = int(row[0]) if row else 0
            if expected_version is not None and expected_version != current:
                raise KbsError("kbs.conflict", f"policy of {resource} is at version {current}")
            new = current + 1
            db.execute(
                "INSERT INTO policy_versions VALUES (?, ?, ?, ?, ?)",
                (name, new, document, digest, _ts(created)),
            )
            if row is None:
                db.execute("INSERT INTO policies VALUES (?, ?, ?)", (name, resource.owner, new))
            else:
                db.execute("UPDATE policies SET current=? WHERE name=?", (new, name))
        return new

    def policy_version(self, resource: ResourceName, version: int | None = None) -> PolicyVersion:
        name = str(resource)
        with self._lock:
            cur = self._db.execute("SELECT current FROM policies WHERE name=?", (name,)).fetchone()
            if cur is None:
                raise KbsError("kbs.policy_missing", f"{resource} has no release policy")
            want = int(cur[0]) if version is None else version
            row = self._db.execute(
                "SELECT document, digest, created FROM policy_versions WHERE name=? AND version=?",
                (name, want),
            ).fetchone()
        if row is None:
            raise _not_found(resource, f"policy version {version} of")
        return PolicyVersion(name, want, str(row[0]), str(row[1]), _dt(row[2]))

    def policy_versions(self, resource: ResourceName) -> tuple[int, ...]:
        rows = self._read(
            "SELECT version FROM policy_versions WHERE name=? ORDER BY version", (str(resource),)
        )
        return tuple(int(r[0]) for r in rows)

    def retire_policy_version(self, resource: ResourceName, version: int) -> None:
        self._retire("policies", "policy_versions", resource, version)

    # nonces
    def add_nonce(self, nonce: bytes, expires_at: datetime, now: datetime) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM nonces WHERE expires_at < ?", ((now - NONCE_MEMORY).timestamp(),)
            )
            db.execute("INSERT INTO nonces VALUES (?, ?, 0)", (nonce, expires_at.timestamp()))

    def spend_nonce(self, nonce: bytes, now: datetime) -> NonceState:
        with self._tx() as db:
            row = db.execute(
                "SELECT expires_at, used FROM nonces WHERE nonce=?", (nonce,)
            ).fetchone()
            if row is None:
                return NonceState.UNKNOWN
            if row[1]:
                return NonceState.USED
            db.execute("UPDATE nonces SET used=1 WHERE nonce=?", (nonce,))
            return NonceState.EXPIRED if now.timestamp() >= row[0] else NonceState.FRESH

    # revocation lists
    def put_revocation(self, entry: Revocation) -> None:
        with self._tx() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM revocations WHERE owner=?",
                                  (entry.owner,)).fetchone()
            exists = db.execute("SELECT 1 FROM revocations WHERE owner=? AND kind=? AND value=?",
                                (entry.owner, entry.kind, entry.value)).fetchone()
            if exists is None and count >= MAX_REVOCATIONS_PER_OWNER:
                raise KbsError("kbs.conflict", "the revocation list is full")
            db.execute("INSERT OR REPLACE INTO revocations VALUES (?, ?, ?, ?, ?)",
                       (entry.owner, entry.kind, entry.value, entry.reason, _ts(entry.created)))

    def delete_revocation(self, owner: str, kind: str, value: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM revocations WHERE owner=? AND kind=? AND value=?",
                             (owner, kind, value))
            return cur.rowcount > 0

    def revocations(self, owner: str) -> list[Revocation]:
        rows = self._read("SELECT owner, kind, value, reason, created FROM revocations "
                          "WHERE owner=? ORDER BY created, kind, value", (owner,))
        return [Revocation(r[0], r[1], r[2], r[3], _dt(r[4])) for r in rows]

    # decisions
    def record_decision(self, decision: Decision) -> None:
        with self._tx() as db:
            self._record(db, decision)

    def _record(self, db: sqlite3.Connection, decision: Decision) -> None:
        d = decision
        key = aggregate_key(d) if is_aggregated(d) else None
        if key is not None:
            counted = db.execute(
                "UPDATE decisions SET count = count + ? WHERE bucket=? AND action=?"
                " AND resource=? AND code=? AND client=?", (d.count, *key)
            ).rowcount
            if counted:
                return
        db.execute(
            "INSERT INTO decisions (at, action, resource, owner, outcome, client, code,"
            " version, detail, policy_digest, evidence_sha256, checks, actor, count, bucket)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _ts(d.at),
                d.action,
                d.resource,
                d.owner or "",  # the column's "no owner": the resource is not a name
                d.outcome,
                d.client,
                d.code,
                d.version,
                d.detail,
                d.policy_digest,
                d.evidence_sha256,
                json.dumps(list(d.checks)),
                d.actor,
                d.count,
                None if key is None else key[0],
            ),
        )
        if key is not None:
            # The retention bound: the newest aggregate rows stay, the oldest go.
            db.execute(
                "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions"
                " WHERE bucket IS NOT NULL ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (self._max_aggregated,),
            )

    # the KEK (kbs/rekey.py)
    def rewrap_secrets(self, rewrap: Rewrap, *, kek_id: str, decision: Decision) -> int:
        """Every stored secret version re-wrapped, the new KEK's id recorded and ``decision``
        logged, in one transaction: any error (a secret the old KEK does not open, a crash)
        leaves every row as it was (SQLite's atomic commit)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT name, version, wrapped FROM secret_versions ORDER BY name, version"
            ).fetchall()
            for name, version, wrapped in rows:
                db.execute(
                    "UPDATE secret_versions SET wrapped=? WHERE name=? AND version=?",
                    (rewrap(str(name), int(version), bytes(wrapped)), name, version),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('kek_id', ?)", (kek_id,))
            self._record(db, replace(decision, detail=f"{decision.detail}; {len(rows)} secret "
                                     "versions re-wrapped"))
        return len(rows)

    def kek_id(self) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key='kek_id'")
        return str(rows[0][0]) if rows else None

    def decisions(
        self, *, owner: str | None = None, resource: str | None = None, limit: int = 100
    ) -> list[Decision]:
        sql = (
            "SELECT at, action, resource, outcome, client, code, version, detail, policy_digest,"
            " evidence_sha256, checks, actor, count FROM decisions"
            " WHERE (?1 IS NULL OR owner = ?1 OR actor = ?1) AND (?2 IS NULL OR resource = ?2)"
            " ORDER BY id DESC LIMIT ?3"
        )
        rows = self._read(sql, (owner, resource, max(1, min(limit, 10_000))))
        return [
            Decision(
                at=_dt(str(r[0])),
                action=str(r[1]),
                resource=str(r[2]),
                outcome="allowed" if r[3] == "allowed" else "refused",
                client=str(r[4]),
                code=None if r[5] is None else str(r[5]),
                version=None if r[6] is None else int(r[6]),
                detail=str(r[7]),
                policy_digest=str(r[8]),
                evidence_sha256=str(r[9]),
                checks=tuple(json.loads(str(r[10]))),
                actor=str(r[11]),
                count=int(r[12]),
            )
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._flock >= 0:
                os.close(self._flock)  # releases the lock
                self._flock = -1
