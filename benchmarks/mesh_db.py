"""Enclave -> PostgreSQL over mutual TLS: what the workload certificate costs a connection.

A real PostgreSQL with TLS on 127.0.0.1 (the distribution's server, configured with the lines
``mesh.database.server_config`` gives; tests/mesh/pg_tls.py), plus one benchmark-only
``host ... trust`` line for a plain-TCP user as the baseline. The client is psycopg with the
parameters the enclave uses (``DatabaseTls.params``: verify-full, the workload certificate from
``/dev/shm``). Each figure is the p50 of MEDCLAVE_BENCH_MESH_DB_N calls (default 30) per round,
in interleaved rounds (benchmarks._common).

Baseline: plain TCP, a new connection and ``SELECT 1`` per call.
  mTLS, new connection         TLS 1.3 both ways, the server's verify-full and the ident map
  mTLS, open connection        ``SELECT 1`` on a connection kept open (what a pool does)
  plain, open connection       for scale

Run: ``PYTHONPATH=src python -m benchmarks mesh_db`` (``MEDCLAVE_BENCH_MESH_DB_N``,
``MEDCLAVE_BENCH_ROUNDS``); needs ``apt-get install postgresql``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from cryptography.hazmat.primitives.serialization import Encoding

from benchmarks._common import Report, env_int, interleave, timings
from medclave.mesh.certs import new_key
from medclave.mesh.database import DatabaseTls
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.mesh.tls import MeshTls

PLAIN_USER = "bench_plain"


def _p50(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up
    return statistics.median(t * 1e3 for t in timings(fn, n))


def main(argv: list[str] | None = None) -> None:
    from tests.mesh.pg_tls import DB_USER, TENANT, tls_postgres

    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else env_int("MEDCLAVE_BENCH_MESH_DB_N", 30)
    extra = f"host {DB_USER} {PLAIN_USER} 127.0.0.1/32 trust\n"
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(tls_postgres(extra_hba=extra))
        with psycopg.connect(db.admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {PLAIN_USER} LOGIN")
        policy = SegmentationPolicy(TENANT, frozenset({("enclave", "database")}))
        tls = MeshTls(WorkloadId.of(TENANT, "enclave", "bench-1"), ca_pem=db.ca.pem,
                      policy=policy)
        key = new_key()
        cert = db.ca.issue(tls.identity, key.public_key(), claims={"measurement": ["ab" * 48]},
                           now=datetime.now(UTC), lifetime=timedelta(hours=1))
        tls.install(key, cert.public_bytes(Encoding.PEM), cert.not_valid_after_utc)
        client = DatabaseTls(tls, root_ca=db.ca_file)
        stack.callback(client.close)
        plain_url = db.url.replace(f"{DB_USER}@", f"{PLAIN_USER}@")

        def connect(url: str, **params: str) -> Callable[[], None]:
            def once() -> None:
                with psycopg.connect(url, **params) as conn:
                    conn.execute("SELECT 1").fetchone()
            return once

        def query(conn: psycopg.Connection[tuple[object, ...]]) -> Callable[[], None]:
            return lambda: conn.execute("SELECT 1").fetchone()

        kept_tls = stack.enter_context(psycopg.connect(db.url, **client.params()))
        kept_plain = stack.enter_context(psycopg.connect(plain_url, sslmode="disable"))
        got = interleave({
            "plain": lambda: _p50(connect(plain_url, sslmode="disable"), n),
            "mtls": lambda: _p50(connect(db.url, **client.params()), n),
            "mtls kept": lambda: _p50(query(kept_tls), n),
            "plain kept": lambda: _p50(query(kept_plain), n),
        })
    report = Report("mesh_db", f"enclave -> PostgreSQL on loopback, p50 of {n} per round")
    base = got["plain"]
    report.baseline("plain TCP, new connection + SELECT 1", base, "ms p50")
    report.row("mTLS, new connection + SELECT 1", got["mtls"], "ms p50", baseline=base)
    report.row("mTLS, SELECT 1 on an open connection", got["mtls kept"], "ms p50",
               baseline=base)
    report.row("plain, SELECT 1 on an open connection", got["plain kept"], "ms p50",
               baseline=base)
    report.note(f"mTLS overhead per new connection (median minus baseline median): "
                f"{statistics.median(got['mtls']) - statistics.median(base):.2f} ms")
    report.ratio_note("mTLS / plain, open connection", got["mtls kept"], got["plain kept"])
    report.emit()


if __name__ == "__main__":
    main()
