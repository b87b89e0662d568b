"""The proxy's API keys in PostgreSQL, shared by the proxy's replicas (issue 17).

The same records and rules as :class:`~medclave.client.apikeys.ApiKeyStore` (only SHA-256 of a
key is stored; a key is shown once; a revoked key is refused from the next request on, by every
replica, because each lookup reads the table). Table ``proxy_api_keys``; schema versions in
``medclave_schema`` under ``api keys``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from medclave.client.apikeys import MAX_KEY_LENGTH, PREFIX, ApiKey, check_record, digest, matches
from medclave.errors import AuthError
from medclave.postgres import migrations as pgm
from medclave.postgres import open_pool

STORE = "api keys"
MIGRATIONS = (pgm.Migration(1, "api keys", pgm.script(
    "CREATE TABLE proxy_api_keys (id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, "
    "subject TEXT NOT NULL, roles TEXT[] NOT NULL, tenant TEXT, created TIMESTAMPTZ NOT NULL, "
    "revoked TIMESTAMPTZ);\n")),)
_COLUMNS = "id, subject, roles, tenant, created, revoked"


def _record(row: tuple[Any, ...]) -> ApiKey:
    key_id, subject, roles, tenant, created, revoked = row
    return ApiKey(key_id=key_id, subject=subject, roles=tuple(roles), tenant=tenant,
                  created=created.astimezone(UTC),
                  revoked=revoked.astimezone(UTC) if revoked else None)


class PostgresApiKeyStore:
    """:class:`~medclave.client.apikeys.ApiKeys` in PostgreSQL."""

    def __init__(self, url_or_pool: str | ConnectionPool, *, allow_remote: bool = False) -> None:
        self._owns_pool = isinstance(url_or_pool, str)
        self.pool = (open_pool(url_or_pool, max_size=4, allow_remote=allow_remote)
                     if isinstance(url_or_pool, str) else url_or_pool)
        try:
            with self.pool.connection() as conn:
                pgm.migrate(conn, store=STORE, migrations=MIGRATIONS)
        except BaseException:
            self.close()
            raise

    def _run(self, sql: str, args: tuple[object, ...]) -> tuple[int, list[tuple[Any, ...]]]:
        """(rows changed, rows returned), read before the connection goes back to the pool."""
        try:
            with self.pool.connection() as conn:
                cur = conn.execute(sql, args)
                return cur.rowcount, (cur.fetchall() if cur.description else [])
        except (psycopg.Error, PoolTimeout) as exc:
            # Fail closed: a key that cannot be looked up is no key.
            raise AuthError("auth.state_unavailable", f"API keys: {type(exc).__name__}") from exc

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def add(self, *, subject: str, roles: Sequence[str], tenant: str | None = None,
            now: datetime | None = None) -> tuple[str, ApiKey]:
        roles = check_record(subject, roles, tenant)
        created = (now or datetime.now(UTC)).astimezone(UTC)
        while True:  # an id collision (1 in 4 billion per key) just draws again
            key_id = secrets.token_hex(4)
            key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            made, _ = self._run("INSERT INTO proxy_api_keys (id, digest, subject, roles, tenant, "
                             "created) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                             (key_id, digest(key), subject, list(roles), tenant, created))
            if made == 1:
                break
        return key, ApiKey(key_id=key_id, subject=subject, roles=roles, tenant=tenant,
                           created=created)

    def list(self) -> list[ApiKey]:
        _, rows = self._run(f"SELECT {_COLUMNS} FROM proxy_api_keys ORDER BY created, id",  # noqa: S608
                            ())
        return [_record(r) for r in rows]

    def revoke(self, key_id: str, *, now: datetime | None = None) -> bool:
        when = (now or datetime.now(UTC)).astimezone(UTC)
        changed, _ = self._run("UPDATE proxy_api_keys SET revoked = %s WHERE id = %s "
                               "AND revoked IS NULL", (when, key_id))
        return changed == 1

    def lookup(self, key: str) -> ApiKey | None:
        if len(key) > MAX_KEY_LENGTH or not matches(key):
            return None
        _, rows = self._run(f"SELECT {_COLUMNS} FROM proxy_api_keys "  # noqa: S608
                            "WHERE digest = %s AND revoked IS NULL", (digest(key),))
        return _record(rows[0]) if rows else None
