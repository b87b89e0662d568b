"""Local API keys: how an unmodified OpenAI app authenticates to the hospital's proxy.

``medclave proxy keys add --sub dr-alice --roles clinician`` issues a key for one user identity.
The app sends it as its OpenAI ``api_key`` (``Authorization: Bearer mck_...``); the proxy maps it
to that user and asks the IdP for a short-lived token for them (token exchange,
:mod:`medclave.client.credentials`). The key never leaves the hospital: the enclave sees only
the per-user token, inside the encapsulation.

A key is ``mck_<id>_<secret>``: ``id`` (8 hex digits) names it in ``list`` and ``revoke``;
``secret`` is 256 random bits. Only SHA-256 of the whole key is stored, in ``apikeys.db``
(SQLite, mode 0600, in a 0700 folder): a fast hash is enough for a 256-bit random secret (no
dictionary to try, unlike a password), and lets every request be checked without slowing it.
The key is shown once, at ``add``. A revoked key is refused at once: each request reads the
file (an indexed lookup), so the running proxy sees ``revoke`` without a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from medclave import migrations
from medclave.auth.tokens import MAX_ROLES, is_valid_name
from medclave.errors import InputError
from medclave.postgres.pool import is_postgres_url
from medclave.util.files import check_secret_file

PREFIX: Final = "mck_"
FILE: Final = "apikeys.db"
MAX_KEY_LENGTH: Final = 128
_KEY = re.compile(r"mck_([0-9a-f]{8})_[A-Za-z0-9_-]{43}\Z")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    roles TEXT NOT NULL,
    tenant TEXT,
    created TEXT NOT NULL,
    revoked TEXT
);
"""


# Versioned (medclave.migrations): a file from before versions is version 1.
MIGRATIONS: Final = (migrations.Migration(1, "api_keys table", migrations.script(_SCHEMA)),)


def _legacy_version(db: sqlite3.Connection) -> int:
    return 1 if "api_keys" in migrations.tables(db) else 0


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer value is one of ours (else it is a JWT for the enclave to judge)."""
    return token.startswith(PREFIX)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def matches(key: str) -> bool:
    """Whether ``key`` has the form of one of ours (checked before any lookup)."""
    return _KEY.match(key) is not None


def check_record(subject: str, roles: Sequence[str], tenant: str | None) -> tuple[str, ...]:
    """The roles, deduplicated; ``input.malformed`` for a record no store may hold."""
    unique = tuple(dict.fromkeys(roles))
    if not is_valid_name(subject):
        raise InputError("input.malformed", "the subject must be a plain identifier")
    if not unique or len(unique) > MAX_ROLES or not all(is_valid_name(r) for r in unique):
        raise InputError("input.malformed", "name one or more roles, plain identifiers")
    if tenant is not None and not is_valid_name(tenant):
        raise InputError("input.malformed", "the tenant must be a plain identifier")
    return unique


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """A key's record: never the key itself."""

    key_id: str
    subject: str
    roles: tuple[str, ...]
    tenant: str | None
    created: datetime
    revoked: datetime | None = None


class ApiKeys(Protocol):
    """The proxy's key store: :class:`ApiKeyStore` (SQLite, one machine) or
    :class:`~medclave.client.pg_apikeys.PostgresApiKeyStore` (shared by replicas)."""

    def add(self, *, subject: str, roles: Sequence[str], tenant: str | None = None,
            now: datetime | None = None) -> tuple[str, ApiKey]: ...
    def list(self) -> list[ApiKey]: ...
    def revoke(self, key_id: str, *, now: datetime | None = None) -> bool: ...
    def lookup(self, key: str) -> ApiKey | None: ...
    def close(self) -> None: ...


def open_api_keys(data_dir: Path, store: str | None = None, *,
                  allow_remote: bool = False) -> ApiKeys:
    """The key store a proxy's ``store`` setting names: PostgreSQL for a ``postgresql://`` URL,
    else ``apikeys.db`` in ``data_dir``."""
    if store is None:
        return ApiKeyStore(data_dir)
    if not is_postgres_url(store):
        raise InputError("config.invalid", "the proxy's store is a postgresql:// URL")
    from medclave.client.pg_apikeys import PostgresApiKeyStore  # the `postgres` extra

    return PostgresApiKeyStore(store, allow_remote=allow_remote)


class ApiKeyStore:
    """``apikeys.db`` in the proxy's data folder; safe to share between threads and processes."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / FILE
        try:
            # Created owner-only before SQLite opens it (its journal takes the file's mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise InputError("config.invalid", f"cannot create {FILE}: {exc}") from exc
        check_secret_file(path, "API key database")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            migrations.migrate(self._db, store="api keys", migrations=MIGRATIONS,
                               legacy=_legacy_version)
        except sqlite3.Error as exc:
            raise InputError("config.invalid", f"cannot open {FILE}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def add(self, *, subject: str, roles: Sequence[str], tenant: str | None = None,
            now: datetime | None = None) -> tuple[str, ApiKey]:
        """A new key for ``subject``: (the key, shown once; its record)."""
        roles = check_record(subject, roles, tenant)
        created = now or datetime.now(UTC)
        with self._lock:
            while True:  # an id collision (1 in 4 billion per key) just draws again
                key_id = secrets.token_hex(4)
                key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
                try:
                    self._db.execute(
                        "INSERT INTO api_keys (id, digest, subject, roles, tenant, created) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (key_id, digest(key), subject, " ".join(roles), tenant,
                         created.isoformat()))
                    break
                except sqlite3.IntegrityError:
                    continue
        return key, ApiKey(key_id=key_id, subject=subject, roles=roles, tenant=tenant,
                           created=created)

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute("SELECT id, subject, roles, tenant, created, revoked "
                                    "FROM api_keys ORDER BY created, id").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, key_id: str, *, now: datetime | None = None) -> bool:
        """Revoke a key by its id; False if there is no such unrevoked key."""
        when = (now or datetime.now(UTC)).isoformat()
        with self._lock:
            cur = self._db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked "
                                   "IS NULL", (when, key_id))
        return cur.rowcount == 1

    def lookup(self, key: str) -> ApiKey | None:
        """The unrevoked key's record, or None (unknown, malformed or revoked)."""
        if len(key) > MAX_KEY_LENGTH or not matches(key):
            return None
        with self._lock:
            row = self._db.execute("SELECT id, subject, roles, tenant, created, revoked "
                                   "FROM api_keys WHERE digest = ? AND revoked IS NULL",
                                   (digest(key),)).fetchone()
        return None if row is None else _record(row)


def _record(row: tuple[str, str, str, str | None, str, str | None]) -> ApiKey:
    key_id, subject, roles, tenant, created, revoked = row
    return ApiKey(key_id=key_id, subject=subject, roles=tuple(roles.split()), tenant=tenant,
                  created=datetime.fromisoformat(created),
                  revoked=datetime.fromisoformat(revoked) if revoked else None)
