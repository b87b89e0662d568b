"""The broker's per-client token buckets in PostgreSQL, shared by every broker replica.

:class:`~medclave.kbs.ratelimit.RateLimiter` keeps its buckets in one process, so N replicas
behind a balancer would grant a client N times its rate. Here a bucket is one row and taking a
token is ONE statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``): the refill
(``rate`` per second since the row's last change, capped at ``burst``) and the take are computed
under the row lock PostgreSQL holds for the upsert, so concurrent requests from any number of
replicas take exactly the tokens there are. No row comes back when fewer than one token is left:
``auth.rate_limited``.

Time is the database's clock (``clock_timestamp()``), one clock for every replica, unless a
clock is injected (tests drive it, like the in-memory limiter's). Rows whose bucket would be full
again are equivalent to no row and are deleted at most every ``purge_seconds``, which bounds the
table by the clients seen within one refill time. A database that cannot answer refuses the
request (``kbs.unavailable``): a limiter that cannot count must not wave requests through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from medclave.errors import AuthError, KbsError
from medclave.postgres import migrations as pgm

STORE = "rate limit"
MIGRATIONS = (pgm.Migration(1, "token buckets", pgm.script(
    "CREATE TABLE kbs_rate_buckets (client TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, "
    "updated DOUBLE PRECISION NOT NULL);\n"
    "CREATE INDEX kbs_rate_buckets_updated ON kbs_rate_buckets (updated);\n")),)

_NOW = "COALESCE(%(now)s::double precision, extract(epoch FROM clock_timestamp()))"
_TAKE = f"""
INSERT INTO kbs_rate_buckets AS b (client, tokens, updated)
VALUES (%(client)s, %(burst)s - 1, {_NOW})
ON CONFLICT (client) DO UPDATE SET
    tokens = LEAST(%(burst)s, b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * %(rate)s) - 1,
    updated = GREATEST(b.updated, EXCLUDED.updated)
WHERE LEAST(%(burst)s, b.tokens + GREATEST(0, EXCLUDED.updated - b.updated) * %(rate)s) >= 1
RETURNING tokens
"""  # noqa: S608 - only the fixed clock expression is formatted in


class PostgresRateLimiter:
    """``rate`` tokens per second, at most ``burst`` saved up, one token per request, per
    client, across every replica sharing the database."""

    def __init__(self, pool: ConnectionPool, rate: float, burst: int, *,
                 clock: Callable[[], float] | None = None, purge_seconds: float = 60.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.pool = rate, burst, pool
        self._clock = clock
        self._purge_every = purge_seconds
        self._purged = time.monotonic()
        self._lock = threading.Lock()
        with pool.connection() as conn:
            pgm.migrate(conn, store=STORE, migrations=MIGRATIONS)

    def check(self, client: str) -> None:
        """Take one token for ``client`` or raise ``auth.rate_limited``."""
        args = {"client": client, "burst": float(self.burst), "rate": self.rate,
                "now": None if self._clock is None else self._clock()}
        try:
            with self.pool.connection() as conn:
                self._maybe_purge(conn, args["now"])
                row = conn.execute(_TAKE, args).fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            raise KbsError("kbs.unavailable", f"rate limit: {type(exc).__name__}") from exc
        if row is None:
            raise AuthError("auth.rate_limited", f"client {client} over {self.rate}/s")

    def _maybe_purge(self, conn: psycopg.Connection[tuple[object, ...]], now: object) -> None:
        tick = time.monotonic()
        with self._lock:
            if tick - self._purged < self._purge_every:
                return
            self._purged = tick
        # A bucket refilled to ``burst`` is the same as no bucket.
        conn.execute(f"DELETE FROM kbs_rate_buckets WHERE updated < {_NOW} - %(full)s",  # noqa: S608
                     {"now": now, "full": self.burst / self.rate})
