"""Replay caches: remember a one-time value (a DPoP proof's ``jti``, RFC 9449 §11.1) until it
would expire anyway. Access tokens are not one-time values and are never recorded here.

The interface is one method, :meth:`ReplayCache.add`, which atomically records a key and says
whether it was new. The in-memory cache serves one process; replicas that must refuse a token
another replica already accepted share a :class:`SqliteReplayCache` file (one machine) or
PostgreSQL (:class:`~medclave.auth.pg_replay.PostgresReplayCache`, any number of machines).
:func:`open_replay_cache` chooses from a service's ``store`` setting.
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from medclave import migrations
from medclave.errors import AuthError, InputError
from medclave.postgres.pool import is_postgres_url


class ReplayCache(Protocol):
    def add(self, key: str, *, expires_at: datetime, now: datetime) -> bool:
        """Record ``key`` until ``expires_at``; False if it is already recorded and unexpired.

        Raises ``auth.rate_limited`` when the cache is full, so that it fails closed.
        """
        ...


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise InputError("config.invalid", "times must be timezone-aware")
    return moment.timestamp()


class MemoryReplayCache:
    """A bounded in-process cache; expired keys are dropped as time passes."""

    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise InputError("config.invalid", "max_entries must be positive")
        self._max = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expiry, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expiry:
                del self._expiry[key]

    def add(self, key: str, *, expires_at: datetime, now: datetime) -> bool:
        exp, t = _epoch(expires_at), _epoch(now)
        with self._lock:
            self._purge(t)
            current = self._expiry.get(key)
            if current is not None and current > t:
                return False
            if len(self._expiry) >= self._max:
                raise AuthError("auth.rate_limited", "the replay cache is full")
            self._expiry[key] = exp
            heapq.heappush(self._heap, (exp, key))
            return True


_MIGRATIONS = (migrations.Migration(1, "replay table", migrations.script(
    "CREATE TABLE replay (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)")),)


def _legacy_version(db: sqlite3.Connection) -> int:
    return 1 if "replay" in migrations.tables(db) else 0


def _wal(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")


class SqliteReplayCache:
    """A replay cache in a SQLite file (WAL), shared by the processes of one machine."""

    def __init__(self, path: Path | str) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # Versioned (medclave.migrations): checked before the pragma or any DDL.
            migrations.migrate(self._conn, store="replay cache", migrations=_MIGRATIONS,
                               legacy=_legacy_version,
                               after_check=_wal)

    def close(self) -> None:
        self._conn.close()

    def add(self, key: str, *, expires_at: datetime, now: datetime) -> bool:
        exp, t = _epoch(expires_at), _epoch(now)
        with self._lock:
            self._conn.execute("DELETE FROM replay WHERE expires_at <= ?", (t,))
            # One statement, so two processes racing on the same key cannot both see it as new.
            cur = self._conn.execute(
                "INSERT INTO replay (key, expires_at) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE replay.expires_at <= ?",
                (key, exp, t),
            )
            return cur.rowcount == 1


class LayeredReplayCache:
    """A key is new only if it is new to every layer (each layer records it either way).

    A replica keeps its own memory in front of the shared cache: what this process saw is
    refused even if the shared database were rolled back or edited by whoever runs it (for the
    enclave, the operator), and the shared cache adds what the other replicas saw."""

    def __init__(self, *layers: ReplayCache) -> None:
        if not layers:
            raise InputError("config.invalid", "a layered replay cache needs a layer")
        self._layers = layers

    def add(self, key: str, *, expires_at: datetime, now: datetime) -> bool:
        new = True
        for layer in self._layers:
            # Every layer records the key, so a later replay meets it wherever it looks first.
            new = layer.add(key, expires_at=expires_at, now=now) and new
        return new

    def close(self) -> None:
        for layer in self._layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()


def open_replay_cache(store: str | None, *, scope: str, max_entries: int = 1_000_000,
                      allow_remote: bool = False) -> ReplayCache:
    """The replay cache a service's ``store`` setting names: a ``postgresql://`` URL shares it
    with every replica (behind this process's own memory); anything else keeps it in memory,
    as one process needs. ``scope``: which checker, as one database may serve several."""
    local = MemoryReplayCache(max_entries=max_entries)
    if store is None or not is_postgres_url(store):
        return local
    from medclave.auth.pg_replay import PostgresReplayCache  # the `postgres` extra

    return LayeredReplayCache(local, PostgresReplayCache(store, scope=scope,
                                                         allow_remote=allow_remote))


class FailureLog(Protocol):
    """Failed logins per account name within a sliding window (the IdP's throttle)."""

    def recent(self, key: str, *, now: datetime, window: timedelta) -> int:
        """How many failures ``key`` had in the ``window`` before ``now``."""
        ...

    def add(self, key: str, *, now: datetime, window: timedelta) -> None:
        """Record one failure (and forget those older than ``window``)."""
        ...


class MemoryFailureLog:
    """One process's failures; made-up names cannot grow it past ``max_keys`` recent ones."""

    def __init__(self, *, max_keys: int = 10_000) -> None:
        self._max = max_keys
        self._failures: dict[str, list[datetime]] = {}
        self._lock = threading.Lock()

    def recent(self, key: str, *, now: datetime, window: timedelta) -> int:
        with self._lock:
            kept = [t for t in self._failures.get(key, []) if now - t < window]
            self._failures[key] = kept
            return len(kept)

    def add(self, key: str, *, now: datetime, window: timedelta) -> None:
        with self._lock:
            if len(self._failures) > self._max:
                self._failures = {k: kept for k, v in self._failures.items()
                                  if (kept := [t for t in v if now - t < window])}
            self._failures.setdefault(key, []).append(now)


def open_failure_log(store: str | None, *, allow_remote: bool = False) -> FailureLog:
    """The IdP's failed-login log: shared by its replicas in PostgreSQL (so N replicas do not
    grant N times the guesses), else in this process."""
    if store is None or not is_postgres_url(store):
        return MemoryFailureLog()
    from medclave.auth.pg_replay import PostgresFailureLog  # the `postgres` extra

    return PostgresFailureLog(store, allow_remote=allow_remote)


def close_replay_cache(cache: ReplayCache) -> None:
    """Close what :func:`open_replay_cache` opened (a pool), if anything."""
    close = getattr(cache, "close", None)
    if close is not None:
        close()
