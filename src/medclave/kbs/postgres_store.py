"""The PostgreSQL :class:`~medclave.kbs.store.KbsStore`: one database shared by broker replicas.

The same contract as :class:`~medclave.kbs.sqlite_store.SqliteKbsStore`, held when several
brokers write at once (issue 17):

- every change is one transaction (``with conn.transaction()`` on an autocommit connection from
  :func:`medclave.postgres.open_pool`): a broker killed mid-rotation leaves the old version or
  the new one. A read-modify-write first locks the row it reads (``SELECT ... FOR UPDATE``), so
  two replicas rotating the same resource with the same expected version serialize there and
  the second gets ``kbs.conflict``, as on one machine;
- a nonce is spent under its row lock: two replicas presenting the same nonce at once get one
  ``FRESH`` and one ``USED``;
- a revocation list's per-owner bound is checked under a transaction-scoped advisory lock keyed
  by the owner, so replicas adding at once cannot overshoot it;
- the decision log keeps :mod:`medclave.kbs.store`'s retention: permanent rows one each, for
  good; aggregated refusals counted by ``INSERT ... ON CONFLICT`` on the partial unique index of
  their key (atomic across replicas), at most ``max_aggregated`` of them, oldest dropped first.
  A trigger refuses any UPDATE or DELETE of a permanent row, so the log of owners' decisions is
  append-only in the database itself, not only in this code.

A KEK rotation (:mod:`medclave.kbs.rekey`) re-wraps every secret version, records the new KEK's
id in ``kbs_meta`` and logs its decision in one transaction. It must not run beside a broker that
would go on wrapping new secrets under the old KEK: every open store holds a shared session-level
advisory lock on one dedicated connection, and the rotation opens the store ``exclusive`` (refused,
``kbs.unavailable``, while any broker replica has it open; a broker cannot start during one), as
the SQLite store does with ``flock(2)``.

Tables are prefixed ``kbs_``: every store shares one database. Schema versions live in
``medclave_schema`` under the store name ``broker`` (:mod:`medclave.postgres.migrations`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

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
from medclave.postgres import migrations as pgm
from medclave.postgres import open_pool

STORE = "broker"
Conn = psycopg.Connection[tuple[Any, ...]]

_SCHEMA_1 = """
CREATE TABLE kbs_owner_tokens (
    token_hash BYTEA PRIMARY KEY, owner TEXT NOT NULL, created TIMESTAMPTZ NOT NULL);
CREATE INDEX kbs_owner_tokens_owner ON kbs_owner_tokens (owner);
CREATE TABLE kbs_resources (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, current INTEGER NOT NULL);
CREATE INDEX kbs_resources_owner ON kbs_resources (owner, name);
CREATE TABLE kbs_secret_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, wrapped BYTEA NOT NULL,
    created TIMESTAMPTZ NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE kbs_policies (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, current INTEGER NOT NULL);
CREATE TABLE kbs_policy_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, document TEXT NOT NULL, digest TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE kbs_nonces (
    nonce BYTEA PRIMARY KEY, expires_at TIMESTAMPTZ NOT NULL, used BOOLEAN NOT NULL DEFAULT FALSE);
CREATE INDEX kbs_nonces_expiry ON kbs_nonces (expires_at);
CREATE TABLE kbs_decisions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at TIMESTAMPTZ NOT NULL,
    action TEXT NOT NULL, resource TEXT NOT NULL, owner TEXT NOT NULL, outcome TEXT NOT NULL,
    client TEXT NOT NULL, code TEXT, version INTEGER, detail TEXT NOT NULL,
    policy_digest TEXT NOT NULL, evidence_sha256 TEXT NOT NULL, checks TEXT[] NOT NULL,
    actor TEXT NOT NULL, count BIGINT NOT NULL, bucket TEXT);
CREATE INDEX kbs_decisions_owner ON kbs_decisions (owner, id);
CREATE INDEX kbs_decisions_actor ON kbs_decisions (actor, id);
CREATE INDEX kbs_decisions_resource ON kbs_decisions (resource, id);
CREATE UNIQUE INDEX kbs_decisions_aggregate
    ON kbs_decisions (bucket, action, resource, code, client) WHERE bucket IS NOT NULL;
CREATE INDEX kbs_decisions_aggregated ON kbs_decisions (id) WHERE bucket IS NOT NULL;
CREATE FUNCTION kbs_decisions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'kbs_decisions: a permanent decision is never changed or deleted'; END
$$;
CREATE TRIGGER kbs_decisions_append_only BEFORE UPDATE OR DELETE ON kbs_decisions
    FOR EACH ROW WHEN (OLD.bucket IS NULL) EXECUTE FUNCTION kbs_decisions_append_only();
CREATE TABLE kbs_revocations (
    owner TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL, PRIMARY KEY (owner, kind, value));
CREATE TABLE kbs_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

MIGRATIONS = (
    pgm.Migration(1, "broker tables (resources, policies, nonces, decision log, revocations)",
                  pgm.script(_SCHEMA_1)),
)

_DECISION_COLUMNS = ("at, action, resource, outcome, client, code, version, detail, "
                     "policy_digest, evidence_sha256, checks, actor, count")


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _not_found(resource: ResourceName, what: str = "resource") -> KbsError:
    return KbsError("kbs.not_found", f"no {what} {resource}")


# The advisory-lock key every open store shares and a KEK rotation takes alone.
_IN_USE = zlib.crc32(b"medclave-kbs-store-in-use") - (1 << 31)


def _owner_lock(owner: str) -> int:
    return zlib.crc32(b"medclave-kbs-revocations:" + owner.encode()) - (1 << 31)


class PostgresKbsStore:
    """A :class:`~medclave.kbs.store.KbsStore` in PostgreSQL (``store = "postgresql://..."``)."""

    def __init__(self, url_or_pool: str | ConnectionPool, *,
                 max_aggregated: int = MAX_AGGREGATED_DECISIONS, allow_remote: bool = False,
                 exclusive: bool = False) -> None:
        """Open (and migrate) the store. A URL opens a pool that :meth:`close` closes; a pool
        given by the caller stays the caller's. ``exclusive``: for a KEK rotation (module
        docstring)."""
        self._owns_pool = isinstance(url_or_pool, str)
        self.pool = (open_pool(url_or_pool, allow_remote=allow_remote)
                     if isinstance(url_or_pool, str) else url_or_pool)
        self._max_aggregated = max_aggregated
        self._holder: Conn | None = None
        try:
            self._holder = self._hold(exclusive)
            with self.pool.connection() as conn:
                # Reads the version first; a newer one is refused before any write.
                pgm.migrate(conn, store=STORE, migrations=MIGRATIONS)
        except BaseException:
            self.close()
            raise

    def _hold(self, exclusive: bool) -> Conn:
        """A connection of its own holding the in-use lock for as long as the store is open
        (session-level locks belong to a connection, so not one from the pool)."""
        try:
            conn = self.pool.getconn()
        except (psycopg.Error, PoolTimeout) as exc:
            raise KbsError("kbs.unavailable", f"store: {type(exc).__name__}") from exc
        take = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
        row = conn.execute(f"SELECT {take}(%s)", (_IN_USE,)).fetchone()
        if row is None or not row[0]:
            self.pool.putconn(conn)
            raise KbsError("kbs.unavailable", "the store is in use by a running broker or "
                           "command; stop it first" if exclusive else "the store is locked by a "
                           "KEK rotation; start when it is done")
        return conn

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One transaction: all of it commits, or none of it."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise KbsError("kbs.unavailable", f"store: {type(exc).__name__}") from exc

    def _read(self, sql: str, args: tuple[object, ...] | dict[str, object] = ()) -> list[Any]:
        try:
            with self.pool.connection() as conn:
                return list(conn.execute(sql, args).fetchall())
        except (psycopg.Error, PoolTimeout) as exc:
            raise KbsError("kbs.unavailable", f"store read: {type(exc).__name__}") from exc

    # owners
    def add_owner_token(self, owner: str, token_hash: bytes, created: datetime) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO kbs_owner_tokens VALUES (%s, %s, %s)",
                       (token_hash, owner, _utc(created)))

    def owner_token_hashes(self, owner: str) -> tuple[bytes, ...]:
        rows = self._read("SELECT token_hash FROM kbs_owner_tokens WHERE owner = %s", (owner,))
        return tuple(bytes(r[0]) for r in rows)

    def revoke_owner_tokens(self, owner: str) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM kbs_owner_tokens WHERE owner = %s", (owner,)).rowcount

    # secrets
    def create_secret(self, resource: ResourceName, wrapped: bytes, created: datetime) -> int:
        name = str(resource)
        with self._tx() as db:
            # Insert-or-nothing: two replicas creating the same name at once get one each way.
            made = db.execute("INSERT INTO kbs_resources VALUES (%s, %s, 1) "
                              "ON CONFLICT (name) DO NOTHING", (name, resource.owner)).rowcount
            if made == 0:
                raise KbsError("kbs.conflict", f"{resource} exists; rotate it instead")
            db.execute("INSERT INTO kbs_secret_versions VALUES (%s, 1, %s, %s)",
                       (name, wrapped, _utc(created)))
        return 1

    def rotate_secret(self, resource: ResourceName, wrapped: bytes, created: datetime,
                      expected_version: int) -> int:
        name = str(resource)
        with self._tx() as db:
            row = db.execute("SELECT current FROM kbs_resources WHERE name = %s FOR UPDATE",
                             (name,)).fetchone()
            if row is None:
                raise _not_found(resource)
            if row[0] != expected_version:
                raise KbsError("kbs.conflict", f"{resource} is at version {row[0]}")
            new = int(row[0]) + 1
            # Both statements or neither: the new key and the pointer to it commit together.
            db.execute("INSERT INTO kbs_secret_versions VALUES (%s, %s, %s, %s)",
                       (name, new, wrapped, _utc(created)))
            db.execute("UPDATE kbs_resources SET current = %s WHERE name = %s", (new, name))
        return new

    def secret_version(self, resource: ResourceName, version: int | None = None) -> SecretVersion:
        name = str(resource)
        # One statement: the current pointer and the version it names are read together.
        rows = self._read(
            "SELECT r.current, v.version, v.wrapped, v.created FROM kbs_resources r "
            "LEFT JOIN kbs_secret_versions v ON v.name = r.name "
            "AND v.version = COALESCE(%s::int, r.current) WHERE r.name = %s", (version, name))
        if not rows:
            raise _not_found(resource)
        if rows[0][1] is None:
            raise _not_found(resource, f"version {version} of")
        return SecretVersion(name, int(rows[0][1]), bytes(rows[0][2]), _utc(rows[0][3]))

    def resource_info(self, resource: ResourceName) -> ResourceInfo | None:
        rows = self._read(
            "SELECT r.current, array_agg(v.version ORDER BY v.version) FROM kbs_resources r "
            "JOIN kbs_secret_versions v ON v.name = r.name WHERE r.name = %s "
            "GROUP BY r.current", (str(resource),))
        if not rows:
            return None
        return ResourceInfo(str(resource), int(rows[0][0]), tuple(int(v) for v in rows[0][1]))

    def list_resources(self, owner: str) -> list[ResourceInfo]:
        rows = self._read(
            "SELECT r.name, r.current, array_agg(v.version ORDER BY v.version) "
            "FROM kbs_resources r JOIN kbs_secret_versions v ON v.name = r.name "
            "WHERE r.owner = %s GROUP BY r.name, r.current ORDER BY r.name", (owner,))
        return [ResourceInfo(str(r[0]), int(r[1]), tuple(int(v) for v in r[2])) for r in rows]

    def retire_secret_version(self, resource: ResourceName, version: int) -> None:
        self._retire("kbs_resources", "kbs_secret_versions", resource, version)

    def delete_resource(self, resource: ResourceName) -> None:
        name = str(resource)
        with self._tx() as db:
            if db.execute("DELETE FROM kbs_resources WHERE name = %s", (name,)).rowcount == 0:
                raise _not_found(resource)
            db.execute("DELETE FROM kbs_secret_versions WHERE name = %s", (name,))
            db.execute("DELETE FROM kbs_policies WHERE name = %s", (name,))
            db.execute("DELETE FROM kbs_policy_versions WHERE name = %s", (name,))

    def _retire(self, head: str, table: str, resource: ResourceName, version: int) -> None:
        name = str(resource)
        with self._tx() as db:
            row = db.execute(f"SELECT current FROM {head} WHERE name = %s FOR UPDATE",  # noqa: S608 - fixed table names
                             (name,)).fetchone()
            if row is None:
                raise _not_found(resource)
            if row[0] == version:
                raise KbsError("kbs.conflict",
                               "the current version cannot be retired; rotate first")
            deleted = db.execute(f"DELETE FROM {table} WHERE name = %s AND version = %s",  # noqa: S608
                                 (name, version)).rowcount
            if deleted == 0:
                raise _not_found(resource, f"version {version} of")

    # policies
    def put_policy(self, resource: ResourceName, document: str, digest: str, created: datetime,
                   expected_version: int | None = None) -> int:
        name = str(resource)
        with self._tx() as db:
            # A head row at 0 if there is none yet, then its lock: concurrent first policies
            # serialize on it like later ones (the 0 never commits on its own).
            db.execute("INSERT INTO kbs_policies VALUES (%s, %s, 0) ON CONFLICT (name) DO NOTHING",
                       (name, resource.owner))
            row = db.execute("SELECT current FROM kbs_policies WHERE name = %s FOR UPDATE",
                             (name,)).fetchone()
            current = int(row[0]) if row else 0
            if expected_version is not None and expected_version != current:
                raise KbsError("kbs.conflict", f"policy of {resource} is at version {current}")
            new = current + 1
            db.execute("INSERT INTO kbs_policy_versions VALUES (%s, %s, %s, %s, %s)",
                       (name, new, document, digest, _utc(created)))
            db.execute("UPDATE kbs_policies SET current = %s WHERE name = %s", (new, name))
        return new

    def policy_version(self, resource: ResourceName, version: int | None = None) -> PolicyVersion:
        name = str(resource)
        rows = self._read(
            "SELECT p.current, v.version, v.document, v.digest, v.created FROM kbs_policies p "
            "LEFT JOIN kbs_policy_versions v ON v.name = p.name "
            "AND v.version = COALESCE(%s::int, p.current) WHERE p.name = %s", (version, name))
        if not rows:
            raise KbsError("kbs.policy_missing", f"{resource} has no release policy")
        if rows[0][1] is None:
            raise _not_found(resource, f"policy version {version} of")
        r = rows[0]
        return PolicyVersion(name, int(r[1]), str(r[2]), str(r[3]), _utc(r[4]))

    def policy_versions(self, resource: ResourceName) -> tuple[int, ...]:
        rows = self._read("SELECT version FROM kbs_policy_versions WHERE name = %s "
                          "ORDER BY version", (str(resource),))
        return tuple(int(r[0]) for r in rows)

    def retire_policy_version(self, resource: ResourceName, version: int) -> None:
        self._retire("kbs_policies", "kbs_policy_versions", resource, version)

    # nonces
    def add_nonce(self, nonce: bytes, expires_at: datetime, now: datetime) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kbs_nonces WHERE expires_at < %s", (_utc(now - NONCE_MEMORY),))
            db.execute("INSERT INTO kbs_nonces VALUES (%s, %s, FALSE)", (nonce, _utc(expires_at)))

    def spend_nonce(self, nonce: bytes, now: datetime) -> NonceState:
        with self._tx() as db:
            # The row lock: a second replica spending the same nonce waits, then reads used.
            row = db.execute("SELECT expires_at, used FROM kbs_nonces WHERE nonce = %s FOR UPDATE",
                             (nonce,)).fetchone()
            if row is None:
                return NonceState.UNKNOWN
            if row[1]:
                return NonceState.USED
            db.execute("UPDATE kbs_nonces SET used = TRUE WHERE nonce = %s", (nonce,))
            return NonceState.EXPIRED if now >= row[0] else NonceState.FRESH

    # revocation lists
    def put_revocation(self, entry: Revocation) -> None:
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_owner_lock(entry.owner),))
            count = db.execute("SELECT count(*) FROM kbs_revocations WHERE owner = %s",
                               (entry.owner,)).fetchone()
            exists = db.execute("SELECT 1 FROM kbs_revocations WHERE owner = %s AND kind = %s "
                                "AND value = %s", (entry.owner, entry.kind, entry.value)).fetchone()
            if exists is None and count is not None and count[0] >= MAX_REVOCATIONS_PER_OWNER:
                raise KbsError("kbs.conflict", "the revocation list is full")
            db.execute("INSERT INTO kbs_revocations VALUES (%s, %s, %s, %s, %s) "
                       "ON CONFLICT (owner, kind, value) DO UPDATE SET reason = EXCLUDED.reason, "
                       "created = EXCLUDED.created",
                       (entry.owner, entry.kind, entry.value, entry.reason, _utc(entry.created)))

    def delete_revocation(self, owner: str, kind: str, value: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM kbs_revocations WHERE owner = %s AND kind = %s "
                              "AND value = %s", (owner, kind, value)).rowcount > 0

    def revocations(self, owner: str) -> list[Revocation]:
        rows = self._read("SELECT owner, kind, value, reason, created FROM kbs_revocations "
                          "WHERE owner = %s ORDER BY created, kind, value", (owner,))
        return [Revocation(r[0], r[1], r[2], r[3], _utc(r[4])) for r in rows]

    # decisions
    def record_decision(self, decision: Decision) -> None:
        with self._tx() as db:
            self._record(db, decision)

    def _record(self, db: Conn, decision: Decision) -> None:
        d = decision
        key = aggregate_key(d) if is_aggregated(d) else None
        values = (_utc(d.at), d.action, d.resource, d.owner or "", d.outcome, d.client, d.code,
                  d.version, d.detail, d.policy_digest, d.evidence_sha256, list(d.checks),
                  d.actor, d.count, None if key is None else key[0])
        insert = ("INSERT INTO kbs_decisions (at, action, resource, owner, outcome, client, code,"
                  " version, detail, policy_digest, evidence_sha256, checks, actor, count, bucket)"
                  " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
        if key is None:
            db.execute(insert, values)
            return
        # One statement per refusal, atomic across replicas: a new aggregate row, or one
        # more in the row of its key (the first request's record stays).
        made = db.execute(
            insert + " ON CONFLICT (bucket, action, resource, code, client) "
            "WHERE bucket IS NOT NULL DO UPDATE SET count = kbs_decisions.count + "
            "EXCLUDED.count RETURNING (xmax = 0)", values).fetchone()
        if made is not None and made[0]:
            # The retention bound: the newest aggregate rows stay, the oldest go.
            db.execute(
                "DELETE FROM kbs_decisions WHERE bucket IS NOT NULL AND id <= (SELECT id "
                "FROM kbs_decisions WHERE bucket IS NOT NULL ORDER BY id DESC "
                "OFFSET %s LIMIT 1)", (self._max_aggregated,))

    def decisions(self, *, owner: str | None = None, resource: str | None = None,
                  limit: int = 100) -> list[Decision]:
        rows = self._read(
            f"SELECT {_DECISION_COLUMNS} FROM kbs_decisions "  # noqa: S608 - fixed columns
            "WHERE (%(owner)s::text IS NULL OR owner = %(owner)s OR actor = %(owner)s) "
            "AND (%(resource)s::text IS NULL OR resource = %(resource)s) "
            "ORDER BY id DESC LIMIT %(limit)s",
            {"owner": owner, "resource": resource, "limit": max(1, min(limit, 10_000))})
        return [
            Decision(at=_utc(r[0]), action=str(r[1]), resource=str(r[2]),
                     outcome="allowed" if r[3] == "allowed" else "refused", client=str(r[4]),
                     code=None if r[5] is None else str(r[5]),
                     version=None if r[6] is None else int(r[6]), detail=str(r[7]),
                     policy_digest=str(r[8]), evidence_sha256=str(r[9]), checks=tuple(r[10]),
                     actor=str(r[11]), count=int(r[12]))
            for r in rows
        ]

    # the KEK (kbs/rekey.py)
    def rewrap_secrets(self, rewrap: Rewrap, *, kek_id: str, decision: Decision) -> int:
        """Every stored secret version re-wrapped, the new KEK's id recorded and ``decision``
        logged, in one transaction: any error (a secret the old KEK does not open, a crash)
        rolls all of it back."""
        with self._tx() as db:
            rows = db.execute("SELECT name, version, wrapped FROM kbs_secret_versions "
                              "ORDER BY name, version FOR UPDATE").fetchall()
            for name, version, wrapped in rows:
                db.execute("UPDATE kbs_secret_versions SET wrapped = %s WHERE name = %s "
                           "AND version = %s",
                           (rewrap(str(name), int(version), bytes(wrapped)), name, version))
            db.execute("INSERT INTO kbs_meta VALUES ('kek_id', %s) ON CONFLICT (key) "
                       "DO UPDATE SET value = EXCLUDED.value", (kek_id,))
            self._record(db, replace(decision, detail=f"{decision.detail}; {len(rows)} secret "
                                     "versions re-wrapped"))
        return len(rows)

    def kek_id(self) -> str | None:
        rows = self._read("SELECT value FROM kbs_meta WHERE key = 'kek_id'")
        return str(rows[0][0]) if rows else None

    def close(self) -> None:
        holder, self._holder = getattr(self, "_holder", None), None
        if holder is not None:
            try:
                holder.execute("SELECT pg_advisory_unlock_all()")
                self.pool.putconn(holder)
            except (psycopg.Error, PoolTimeout):
                holder.close()  # its session ends, and the lock with it
        if self._owns_pool:
            self.pool.close()
