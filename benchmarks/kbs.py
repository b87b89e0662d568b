"""Key release latency on loopback with sim evidence, against the challenge endpoint alone.

Rows (one broker over SQLite/WAL in a temporary folder, uvicorn on 127.0.0.1, one keep-alive
HTTP client, measured in the same run):
  challenge (baseline)   POST /kbs/v1/challenge: HTTP + one nonce written; the floor of any call
  release request        POST /kbs/v1/release with evidence made beforehand: what the broker does
                         (spend nonce, verify the SNP-layout chain and signature, binding,
                         appraisal, unwrap, HPKE seal, decision recorded)
  fetch, end to end      KbsClient.fetch: challenge, sim evidence signed, release, HPKE open
The goal is a release-request p50 of at most 10 ms. Count: MEDCLAVE_BENCH_KBS_N (default 300).
"""

from __future__ import annotations

import base64
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from medclave.attestation import sim
from medclave.attestation.policy import AppraisalPolicy
from medclave.crypto import hpke
from medclave.kbs.app import create_app
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.factory import build_broker
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.server import BackgroundServer
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import TrustedBrokers

RESOURCE = "kbs:///vendor/model-key/bench"
MEASUREMENT = hashlib.sha384(b"medclave bench enclave").digest()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50 * 1e3, p99 * 1e3


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else int(os.environ.get("MEDCLAVE_BENCH_KBS_N", "300"))
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

            t_challenge = _time(lambda: http.post("/kbs/v1/challenge").raise_for_status(), n)

            prepared = []
            for _ in range(n):
                nonce = bytes.fromhex(http.post("/kbs/v1/challenge").json()["nonce"])
                _, public = hpke.generate_keypair()
                runtime = {"ephemeral_key": base64.b64encode(public).decode()}
                prepared.append({"resource": RESOURCE, "nonce": nonce.hex(),
                                 "evidence": attest(nonce, runtime).model_dump(mode="json")})
            it = iter(prepared)
            t_release = _time(
                lambda: http.post("/kbs/v1/release", json=next(it)).raise_for_status(), n)
            t_fetch = _time(lambda: client.fetch(RESOURCE), n)
            t_attest = _time(lambda: attest(os.urandom(32), {"ephemeral_key": "x"}), n)
        broker.store.close()

    base50, _ = _percentiles(t_challenge)
    rows = [("challenge (baseline)", t_challenge), ("release request", t_release),
            ("fetch, end to end", t_fetch), ("  of which: sim evidence", t_attest)]
    print(f"key release on loopback, sim evidence, SQLite store, n={n}")
    print(f"{'operation':<28}{'p50 ms':>9}{'p99 ms':>9}{'p50 vs challenge':>19}")
    for name, samples in rows:
        p50, p99 = _percentiles(samples)
        print(f"{name:<28}{p50:>9.2f}{p99:>9.2f}{p50 / base50:>18.1f}x")
    goal = _percentiles(t_release)[0]
    print(f"release request p50 {goal:.2f} ms (goal <= 10 ms): {'met' if goal <= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
