"""Shared authentication state in PostgreSQL: the replay cache (a one-time value is accepted
once across every replica) and the IdP's failed-login log.

Each process's :class:`~medclave.auth.replay.MemoryReplayCache` remembers only what that process
saw, so N replicas behind a balancer would each accept the same DPoP proof once (RFC 9449 §11.1
asks the server to refuse a ``jti`` it has seen; a balancer sending the replay elsewhere must not
defeat that). Here every replica records into one table:

- :meth:`PostgresReplayCache.add` is ONE statement, ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
  the held row expired``: PostgreSQL's unique index decides, so of two replicas adding the same
  key at once exactly one sees a row written (``rowcount`` 1) and the other none. An expired row
  not yet purged is taken over by the same statement (the key is new again, as in memory);
- keys are stored as their SHA-256 (a ``jti`` is caller-chosen text of up to 256 characters,
  and the cache's keys hold NUL separators that PostgreSQL text cannot): fixed 32 bytes a row;
- expired rows are deleted at most every ``purge_seconds`` per process (an index on the expiry
  keeps that cheap), so the table holds about one ``max_age`` of proofs;
- a database that cannot answer refuses the request (``auth.state_unavailable``, 503): a replay
  cache that cannot say "new" must fail closed.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from medclave.errors import AuthError, InputError
from medclave.postgres import migrations as pgm
from medclave.postgres import open_pool

STORE = "replay cache"
MIGRATIONS = (pgm.Migration(1, "replay table", pgm.script(
    "CREATE TABLE auth_replay (key BYTEA PRIMARY KEY, expires_at TIMESTAMPTZ NOT NULL);\n"
    "CREATE INDEX auth_replay_expiry ON auth_replay (expires_at);\n")),)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InputError("config.invalid", "times must be timezone-aware")
    return moment


class PostgresReplayCache:
    """A :class:`~medclave.auth.replay.ReplayCache` shared by every replica of a service."""

    def __init__(self, url_or_pool: str | ConnectionPool, *, scope: str,
                 purge_seconds: float = 30.0, allow_remote: bool = False) -> None:
        """``scope`` names the checker (``enclave``, ``idp``, ``proxy-admission`` ...): two
        checkers that each see the same proof once share a table, never each other's keys."""
        self._scope = scope.encode() + b"\x00"
        self._owns_pool = isinstance(url_or_pool, str)
        self.pool = (open_pool(url_or_pool, max_size=4, allow_remote=allow_remote)
                     if isinstance(url_or_pool, str) else url_or_pool)
        self._purge_every = purge_seconds
        self._purged = float("-inf")
        self._lock = threading.Lock()
        try:
            with self.pool.connection() as conn:
                pgm.migrate(conn, store=STORE, migrations=MIGRATIONS)
        except BaseException:
            self.close()
            raise

    def add(self, key: str, *, expires_at: datetime, now: datetime) -> bool:
        exp, at = _aware(expires_at), _aware(now)
        digest = hashlib.sha256(self._scope + key.encode()).digest()
        try:
            with self.pool.connection() as conn:
                self._maybe_purge(conn, at)
                cur = conn.execute(
                    "INSERT INTO auth_replay (key, expires_at) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
                    "WHERE auth_replay.expires_at <= %s", (digest, exp, at))
                return cur.rowcount == 1
        except (psycopg.Error, PoolTimeout) as exc:
            raise AuthError("auth.state_unavailable",
                            f"replay cache: {type(exc).__name__}") from exc

    def _maybe_purge(self, conn: psycopg.Connection[tuple[object, ...]], now: datetime) -> None:
        tick = time.monotonic()
        with self._lock:
            if tick - self._purged < self._purge_every:
                return
            self._purged = tick
        conn.execute("DELETE FROM auth_replay WHERE expires_at <= %s", (now,))

    def __len__(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM auth_replay").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()


FAILURES_STORE = "idp failures"
FAILURE_MIGRATIONS = (pgm.Migration(1, "failed logins", pgm.script(
    "CREATE TABLE idp_failures (key TEXT NOT NULL, at TIMESTAMPTZ NOT NULL);\n"
    "CREATE INDEX idp_failures_key ON idp_failures (key, at);\n"
    "CREATE INDEX idp_failures_at ON idp_failures (at);\n")),)


class PostgresFailureLog:
    """:class:`~medclave.auth.replay.FailureLog` shared by the IdP's replicas: one row per
    failure, counted over the window; rows older than the window are deleted as failures are
    added. A database that cannot answer refuses the login (``auth.state_unavailable``)."""

    def __init__(self, url_or_pool: str | ConnectionPool, *, allow_remote: bool = False) -> None:
        self._owns_pool = isinstance(url_or_pool, str)
        self.pool = (open_pool(url_or_pool, max_size=4, allow_remote=allow_remote)
                     if isinstance(url_or_pool, str) else url_or_pool)
        try:
            with self.pool.connection() as conn:
                pgm.migrate(conn, store=FAILURES_STORE, migrations=FAILURE_MIGRATIONS)
        except BaseException:
            self.close()
            raise

    def recent(self, key: str, *, now: datetime, window: timedelta) -> int:
        try:
            with self.pool.connection() as conn:
                row = conn.execute("SELECT count(*) FROM idp_failures WHERE key = %s AND at > %s",
                                   (key[:512], _aware(now) - window)).fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            raise AuthError("auth.state_unavailable", f"failures: {type(exc).__name__}") from exc
        return int(row[0]) if row else 0

    def add(self, key: str, *, now: datetime, window: timedelta) -> None:
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute("DELETE FROM idp_failures WHERE at <= %s", (_aware(now) - window,))
                conn.execute("INSERT INTO idp_failures VALUES (%s, %s)", (key[:512], now))
        except (psycopg.Error, PoolTimeout) as exc:
            raise AuthError("auth.state_unavailable", f"failures: {type(exc).__name__}") from exc

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()
