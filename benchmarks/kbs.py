"""Key release latency on loopback with sim evidence, against the challenge endpoint alone.

Rows (one broker over SQLite/WAL in a temporary folder, uvicorn on 127.0.0.1, one keep-alive
HTTP client, measured in the same run):
  challenge (baseline)   POST /kbs/v1/challenge: HTTP + one nonce written; the floor of any call
  release request        POST /kbs/v1/release with evidence made beforehand: what the broker does
                         (spend nonce, verify the SNP-layout chain and signature, binding,
                         appraisal, unwrap, HPKE seal, decision recorded)
  fetch, end to end      KbsClient.fetch: challenge, sim evidence signed, release, HPKE open
The goal is a release-request p50 of at most 10 ms. Each row is the p50 of MEDCLAVE_BENCH_KBS_N
calls (default 100) per round, the rows alternating in MEDCLAVE_BENCH_ROUNDS rounds
(benchmarks._common); p99 is over every round's calls together.
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
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import Goal, Report, env_int, fmt, interleave, percentile, timings
from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.background import BackgroundServer
from medclave.crypto import hpke
from medclave.kbs.app import create_app
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.factory import build_broker
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import TrustedBrokers

RESOURCE = "kbs:///vendor/model-key/bench"
MEASUREMENT = hashlib.sha384(b"medclave bench enclave").digest()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else env_int("MEDCLAVE_BENCH_KBS_N", 100)
    # sim evidence warns once per bundle that it is not secure; known here, and thousands of lines
    logging.getLogger("medclave.sim").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="medclave-bench-kbs-") as tmp:
        authority = sim.SimAuthority.load_or_create(Path(tmp))
        settings = KbsSettings(data_dir=Path(tmp) / "kbs", sim_roots=(authority.root_fingerprint,),
                               rate_per_second=1e6, rate_burst=1_000_000)
        broker = build_broker(settings)
        token = broker.issue_owner_token("vendor")
        policy = ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
            "platforms": ["sim"],
            "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT.hex()]}}},
        }))

        def attest(nonce: bytes, runtime: dict[str, Any]) -> Any:
            return sim.make_bundle(authority, nonce=nonce, runtime=runtime,
                                   measurement=MEASUREMENT)

        with BackgroundServer(create_app(settings, broker=broker)) as server, \
                httpx.Client(base_url=server.url) as http:
            with OwnerClient(server.url, token) as owner:
                owner.put(RESOURCE)
                owner.set_policy(RESOURCE, policy)
            client = KbsClient(server.url, attest, http=http,
                               trusted=TrustedBrokers.of([broker.signer.public_key]))
            for _ in range(20):  # warm up: connections, chain cache, imports
                client.fetch(RESOURCE)

            pooled: dict[str, list[float]] = {}

            def p50_ms(name: str, fn: Callable[[], Any]) -> float:
                samples = [t * 1e3 for t in timings(fn, n)]
                pooled.setdefault(name, []).extend(samples)
                return statistics.median(samples)

            def release() -> float:
                prepared = []
                for _ in range(n):  # evidence made beforehand: the broker's work alone is timed
                    nonce = bytes.fromhex(http.post("/kbs/v1/challenge").json()["nonce"])
                    _, public = hpke.generate_keypair()
                    runtime = {"ephemeral_key": base64.b64encode(public).decode()}
                    prepared.append({"resource": RESOURCE, "nonce": nonce.hex(),
                                     "evidence": attest(nonce, runtime).model_dump(mode="json")})
                it = iter(prepared)
                return p50_ms("release", lambda: http.post("/kbs/v1/release",
                                                           json=next(it)).raise_for_status())

            got = interleave({
                "challenge": lambda: p50_ms(
                    "challenge", lambda: http.post("/kbs/v1/challenge").raise_for_status()),
                "release": release,
                "fetch": lambda: p50_ms("fetch", lambda: client.fetch(RESOURCE)),
                "attest": lambda: p50_ms(
                    "attest", lambda: attest(os.urandom(32), {"ephemeral_key": "x"})),
            })
        broker.store.close()

    def p99(name: str) -> str:
        return f"p99 {fmt(percentile(pooled[name], 0.99))} ms"

    report = Report("kbs", f"key release on loopback, sim evidence, SQLite store, p50 of {n} "
                    "calls per round")
    base = got["challenge"]
    report.baseline("challenge", base, "ms p50", p99("challenge"))
    report.row("release request", got["release"], "ms p50", baseline=base,
               goal=Goal("<=", 10.0), note=p99("release"))
    report.row("fetch, end to end", got["fetch"], "ms p50", baseline=base, note=p99("fetch"))
    report.row("  of which: sim evidence", got["attest"], "ms p50", baseline=base,
               note=p99("attest"))
    report.emit()

if __name__ == "__main__":
    main()
