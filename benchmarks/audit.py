"""Audit log (issue 5 goals: >= 5,000 appends/s with a signed checkpoint at least every second;
inclusion proof at 1M entries <= 1 ms; full verification of 1M entries), measured in one run.

Rows (SQLite in WAL, synchronous=FULL, on the local disk; entries are real ~1 KB AuditEntry
bytes, serialized before the clock starts, as the enclave does per request):
  sqlite insert (baseline)    executemany of the same rows, same batches, one transaction each,
                              into a bare (idx, data) table: the floor for durable appends
  append, checkpoint/batch    AuditLog.append_batch (leaf hashes, tree nodes, an Ed25519-signed
                              checkpoint, all in the batch's transaction), 256 per batch
  append, checkpoint/second   the same, signing a checkpoint only when a second has passed
  append, 16 threads          AuditLog.append, one entry per call from 16 request threads:
                              group commit turns them into batches (checkpoint per batch)
  entry serialization         AuditEntry.to_bytes (RFC 8785), per core: the per-request cost
  point lookup (baseline)     SELECT of one entry by index at 1M entries
  inclusion proof             AuditLog.prove_inclusion at 1M entries (random leaves)
  receipt                     AuditLog.receipt: entry, proof and latest checkpoint
  scan (baseline)             reading every entry row once
  verify, hashes              inspect_log without entry parsing: recompute every leaf and node,
                              every checkpoint signature and root, consistency between them
  verify, full                the same plus each entry parsed and checked canonical

Every row is measured once per round, the rows of each group (appends; scan and verification;
lookups) alternating in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common); the big log is built
once. Sizes (``--quick`` in brackets): MEDCLAVE_BENCH_AUDIT_N, the big log for lookups and proofs
(1,000,000 [100,000]); MEDCLAVE_BENCH_AUDIT_VERIFY_N, the prefix of it that scan and verification
read each round (200,000 [50,000]: a full verification of 1M takes over a minute here, five
rounds of it would take most of ``make bench``; the table gives the rate and what 1M takes at
it; set it to 1000000 for the real thing); MEDCLAVE_BENCH_AUDIT_APPENDS, entries per append
round (100,000 [20,000]); MEDCLAVE_BENCH_AUDIT_THREADED, entries per 16-thread round
(20,000 [5,000]).
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import Goal, Report, env_int, fmt, interleave, percentile, timings
from medclave.audit.entry import (
    AttestationSummary,
    AuditEntry,
    Authorization,
    Params,
    commit,
    format_time,
    pseudonym,
)
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.store import SqliteLogStore
from medclave.audit.verify import inspect_log

ORIGIN = "bench.medclave.example/audit"
KEY = bytes(range(32))
BATCH = 256
_RID = "req-%012d"
_SALT = "%032x"


def _template(i: int) -> AuditEntry:
    salt = _SALT % i
    return AuditEntry(
        time=format_time(datetime(2026, 1, 1, tzinfo=UTC)),
        request_id=_RID % i,
        tenant="st-mary",
        user=pseudonym(KEY, "user", "dr-1"),
        patient=pseudonym(KEY, "patient", "mrn-1"),
        action="inference",
        model_digest="ab" * 32,
        engine_build="llama.cpp-b4500-cpu",
        evidence_digest="cd" * 32,
        attestation=AttestationSummary(platform="sevsnp", status="affirming", secure=True),
        params=Params(temperature=0.7, top_p=0.95, max_tokens=512, seed=i),
        salt=salt,
        prompt=commit(KEY, "prompt", salt, b"prompt"),
        answer=commit(KEY, "answer", salt, b"answer"),
        documents=(commit(KEY, "document", salt, b"doc-1"), commit(KEY, "document", salt, b"d2")),
        authorization=Authorization(decision="allow", reason="policy:clinician-own-patients"),
    )


class Entries:
    """Distinct canonical entries, made fast: fixed-width fields substituted into one template
    keep the bytes canonical (same keys, same order, same lengths)."""

    def __init__(self) -> None:
        self._template = _template(0).to_bytes()
        rid, salt = (_RID % 0).encode(), (_SALT % 0).encode()
        assert self._template.count(rid) == 1 and self._template.count(salt) == 1
        self._parts = self._template.replace(rid, b"\0R").replace(salt, b"\0S")

    def get(self, i: int) -> bytes:
        return self._parts.replace(b"\0R", (_RID % i).encode()).replace(
            b"\0S", (_SALT % (i & ((1 << 128) - 1))).encode())

    def batch(self, start: int, n: int) -> list[bytes]:
        return [self.get(i) for i in range(start, start + n)]


def _baseline_inserts(path: Path, rows: list[list[bytes]]) -> float:
    """Seconds to insert ``rows`` into a bare table, one transaction per batch."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t(idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    start, i = time.perf_counter(), 0
    for batch in rows:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO t VALUES (?, ?)", zip(range(i, i + len(batch)), batch,
                                                           strict=True))
        db.execute("COMMIT")
        i += len(batch)
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def _appends(path: Path, rows: list[list[bytes]], per_second: bool) -> tuple[float, int]:
    log = AuditLog.open_sqlite(path, origin=ORIGIN, signer=NoteSigner.generate(ORIGIN))
    start = last = time.perf_counter()
    signed = 0
    for batch in rows:
        now = time.perf_counter()
        sign = not per_second or now - last >= 1.0 or batch is rows[-1]
        log.append_batch(batch, checkpoint=sign)
        if sign:
            signed += 1
            last = now
    elapsed = time.perf_counter() - start
    log.close()
    return elapsed, signed


def _remove(path: Path) -> None:
    """A finished run's database and its WAL files: 100,000 entries are ~100 MB each run."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _p50_us(fn: Callable[[], object], n: int, pooled: list[float]) -> float:
    samples = [t * 1e6 for t in timings(fn, n)]
    pooled.extend(samples)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    big = env_int("MEDCLAVE_BENCH_AUDIT_N", 100_000 if quick else 1_000_000)
    n_append = env_int("MEDCLAVE_BENCH_AUDIT_APPENDS", 20_000 if quick else 100_000)
    n_threaded = env_int("MEDCLAVE_BENCH_AUDIT_THREADED", 5_000 if quick else 20_000)
    verify_n = min(big, env_int("MEDCLAVE_BENCH_AUDIT_VERIFY_N", 50_000 if quick else 200_000))
    entries = Entries()
    report = Report("audit", "audit log: SQLite WAL, synchronous=FULL for appends, ~1 KB entries")
    with tempfile.TemporaryDirectory(prefix="medclave-bench-audit-") as tmp:
        d = Path(tmp)
        batches = [entries.batch(i, min(BATCH, n_append - i)) for i in range(0, n_append, BATCH)]
        n = sum(len(b) for b in batches)
        flat = [e for b in batches for e in b][:n_threaded]
        sample = [_template(i) for i in range(2000)]
        runs = itertools.count()
        signed: dict[str, list[int]] = {"second": [], "threads": []}

        def inserts() -> float:
            path = d / f"base{next(runs)}.db"
            elapsed = _baseline_inserts(path, batches)
            _remove(path)
            return n / elapsed

        def appends(per_second: bool) -> float:
            path = d / f"log{next(runs)}.db"
            elapsed, checkpoints = _appends(path, batches, per_second)
            _remove(path)
            if per_second:
                signed["second"].append(checkpoints)
            return n / elapsed

        def threads() -> float:
            path = d / f"group{next(runs)}.db"
            glog = AuditLog.open_sqlite(path, origin=ORIGIN, signer=NoteSigner.generate(ORIGIN))
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=16) as pool:
                for _ in pool.map(glog.append, flat, chunksize=64):
                    pass
            elapsed = time.perf_counter() - start
            signed["threads"].append(sum(1 for _ in glog.store.checkpoints()))
            glog.close()
            _remove(path)
            return len(flat) / elapsed

        def serialize() -> float:
            start = time.perf_counter()
            for e in sample:
                e.to_bytes()
            return len(sample) / (time.perf_counter() - start)

        got = interleave({"base": inserts, "batch": lambda: appends(False),
                          "second": lambda: appends(True), "threads": threads,
                          "serialize": serialize})
        base = got["base"]
        batches_each = statistics.median(signed["threads"])
        n_flat = len(flat)
        report.baseline("sqlite insert", base, "/s", f"{n:,} rows a round, {BATCH} a transaction")
        report.row("append, checkpoint/batch", got["batch"], "/s", baseline=base)
        report.row("append, checkpoint/second", got["second"], "/s", baseline=base,
                   goal=Goal(">=", 5000),
                   note=f"{statistics.median(signed['second']):.0f} checkpoints a round")
        report.row("append, 16 threads", got["threads"], "/s", baseline=base,
                   note=f"{n_flat:,} entries a round in {batches_each:.0f} batches, "
                        f"{n_flat / batches_each:.0f} each")
        report.row("entry serialization", got["serialize"], "/s", note="RFC 8785, one core")

        # --- the big log: built once, verified in rounds at verify_n, looked up at big ----
        path = d / "big.db"
        log = AuditLog.open_sqlite(path, origin=ORIGIN, signer=NoteSigner.generate(ORIGIN),
                                   synchronous="NORMAL")
        verifier = log.verifier()
        assert verifier is not None
        build = 0.0

        def grow(start: int, end: int) -> None:
            nonlocal build
            began = time.perf_counter()
            step = 10_000
            for i in range(start, end, step):
                # A checkpoint every 100,000 entries, so verification has history to check.
                upto = min(i + step, end)
                log.append_batch(entries.batch(i, upto - i),
                                 checkpoint=upto == end or upto % 100_000 == 0)
            build += time.perf_counter() - began

        grow(0, verify_n)
        store = SqliteLogStore(path, readonly=True)
        checkpoints: list[int] = []

        def scan() -> float:
            db = sqlite3.connect(path)
            start = time.perf_counter()
            for (_data,) in db.execute("SELECT data FROM entries ORDER BY idx"):
                pass
            elapsed = time.perf_counter() - start
            db.close()
            return elapsed

        def verify(parse: bool) -> float:
            start = time.perf_counter()
            result = inspect_log(store, verifier, parse_entries=parse)
            elapsed = time.perf_counter() - start
            assert result.ok, result.findings[:3]
            checkpoints.append(result.checkpoints)
            return elapsed

        got = interleave({"scan": scan, "hashes": lambda: verify(False),
                          "full": lambda: verify(True)})
        store.close()
        base = got["scan"]
        report.baseline(f"scan {verify_n:,}", base, "s")
        for label, key in (("verify, hashes", "hashes"), ("verify, full", "full")):
            per_second = verify_n / statistics.median(got[key])
            report.row(f"{label} {verify_n:,}", got[key], "s", baseline=base,
                       note=f"{checkpoints[0]} checkpoints, {per_second:,.0f} entries/s "
                            f"(1,000,000 at that rate: {1e6 / per_second:.0f} s)")

        grow(verify_n, big)
        report.note(f"built {big:,} entries in 10k batches once (setup, not in rounds): "
                    f"{build:.0f} s, {big / build:,.0f}/s, {path.stat().st_size / 2**20:,.0f} MiB")

        rng = random.Random(1)
        raw = sqlite3.connect(path)
        pooled: dict[str, list[float]] = {"lookup": [], "proof": [], "receipt": []}

        def lookup() -> object:
            return raw.execute("SELECT data FROM entries WHERE idx = ?",
                               (rng.randrange(big),)).fetchone()

        got = interleave({
            "lookup": lambda: _p50_us(lookup, 400, pooled["lookup"]),
            "proof": lambda: _p50_us(lambda: log.prove_inclusion(rng.randrange(big)), 400,
                                     pooled["proof"]),
            "receipt": lambda: _p50_us(lambda: log.receipt(rng.randrange(big)), 100,
                                       pooled["receipt"]),
        })
        raw.close()
        log.close()

        def p99(name: str) -> str:
            return f"p99 {fmt(percentile(pooled[name], 0.99))} us"

        base = got["lookup"]
        report.baseline(f"point lookup @{big:,}", base, "us p50", p99("lookup"))
        report.row(f"inclusion proof @{big:,}", got["proof"], "us p50", baseline=base,
                   goal=Goal("<=", 1000), note=p99("proof"))
        report.row(f"receipt @{big:,}", got["receipt"], "us p50", baseline=base,
                   note=p99("receipt"))

    report.emit()


if __name__ == "__main__":
    main()
