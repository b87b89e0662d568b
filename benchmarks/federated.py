"""Federated learning on Flower: what attestation gating and SecAgg+ cost per round, and what
admission by attestation costs per site, on one machine (sim evidence, loopback TLS).

One federation of the five demo sites (LocalFederation: flower-superlink and five
flower-supernode processes, SuperNode authentication and TLS on). Rows:

  plain Flower round (baseline)   the same Flower App with the gate, SecAgg+ and DP switched
                                  off (run config), default FedAvg fit workflow
  gated SecAgg+ round             the roll call with fresh evidence from every site, evidence on
                                  every message both ways, the four SecAgg+ stages
  register a key (baseline)       ``flwr supernode register`` of a fresh P-384 key: what Flower
                                  itself costs to admit a node
  admission by attestation        challenge, sim evidence over the node key and data digest,
                                  verification and appraisal, then the same registration

  message digest (baseline)       content_digest of a reply (Flower object ids), in process
  evidence both ways, per message the aggregator's sim evidence made and appraised by the site,
                                  the site's evidence over the reply made and appraised by the
                                  aggregator (GatedGrid and the attest mod), in process

``MEDCLAVE_BENCH_FL_ONLY=evidence`` runs the in-process rows alone (seconds, no Flower processes).
A round's time is the ServerApp's own (from configure_fit to the aggregate, result.json), one
Flower round per run; each benchmark round runs each configuration once, alternating
(benchmarks._common.interleave). Goal for the gated round: at most 10% over plain Flower.
Flower starts a ClientApp process per message and SuperNodes poll for work every three seconds,
so both rows are dominated by Flower's own round trips; the gated round has two more of them
per round (the roll call and SecAgg+'s extra stages) than FedAvg's single fit stage.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from benchmarks._common import Goal, Report, interleave, timings
from medclave.attestation import sim
from medclave.attestation.policy import parse_policy
from medclave.fl import deploy
from medclave.fl.evidence import Appraiser, content_digest
from medclave.fl.gate import ATTEST_RECORD
from medclave.fl.local import LocalFederation, demo_policy
from medclave.fl.site import init_site, seal_data
from medclave.protocol.evidence import EvidenceBundle


def evidence_rows(report: Report, n: int = 50) -> None:
    """The per-message cost of the gate, without Flower: p50 of ``n`` messages per round."""
    with tempfile.TemporaryDirectory(prefix="medclave-bench-fl-ev-") as tmp:
        authority = sim.SimAuthority.load_or_create(Path(tmp))
        policy = parse_policy(demo_policy(sim.code_measurement()).encode())
        appraiser = Appraiser(policy, frozenset([authority.root_fingerprint]))
        reply = RecordDict({"update": ArrayRecord([np.zeros(11), np.zeros(1)])})

        def attest(nonce: bytes, runtime: dict[str, object]) -> EvidenceBundle:
            return sim.make_bundle(authority, nonce=nonce, runtime=dict(runtime))

        def digest_only() -> None:
            content_digest(reply, skip=ATTEST_RECORD)

        def both_ways() -> None:
            nonce = os.urandom(32)
            agg = {"purpose": "medclave-fl-aggregator-v1", "federation": "f", "round": 1}
            appraiser.check(attest(nonce, {**agg, "site_nonce": ""}), nonce=nonce, expect=agg)
            site = {"purpose": "medclave-fl-update-v1", "federation": "f", "round": 1,
                    "node_key": "00" * 32, "update": content_digest(reply, skip=ATTEST_RECORD),
                    "site_nonce": "11" * 32}
            appraiser.check(attest(nonce, site), nonce=nonce, expect=site)

        got = interleave({
            "digest": lambda: statistics.median(t * 1e3 for t in timings(digest_only, n)),
            "evidence": lambda: statistics.median(t * 1e3 for t in timings(both_ways, n)),
        })
    report.baseline("message digest", got["digest"], "ms p50")
    report.row("evidence both ways, per message", got["evidence"], "ms p50",
               baseline=got["digest"])


def main(argv: list[str] | None = None) -> None:
    del argv  # no options: MEDCLAVE_BENCH_ROUNDS sets the rounds (minimum 5)
    logging.getLogger("medclave.sim").setLevel(logging.ERROR)
    if os.environ.get("MEDCLAVE_BENCH_FL_ONLY") == "evidence":
        report = Report("federated", "the gate's per-message cost, in process, sim evidence")
        evidence_rows(report)
        report.emit()
        return
    with tempfile.TemporaryDirectory(prefix="medclave-bench-fl-") as tmp:
        root = Path(tmp)
        lf = LocalFederation.create(root)
        counter = iter(range(10_000))
        try:
            lf.start()
            for name in list(lf.sites):
                lf.admit(name)
            for name in lf.sites:
                lf.start_node(name)

            def round_seconds(gated: bool) -> float:
                run = f"{'gated' if gated else 'plain'}-{next(counter)}"
                result = lf.run(run, rounds=1, gate=gated, secagg=gated, dp=False,
                                timeout=900)
                return float(result["rounds"][0]["seconds"])

            rounds = interleave({"plain": lambda: round_seconds(False),
                                 "gated": lambda: round_seconds(True)})
            for proc in lf.nodes.values():
                proc.stop()
            lf.nodes.clear()

            def register_only() -> float:
                site = init_site(root / "extra" / f"r{next(counter)}", site="extra",
                                 federation=lf.federation.id, sim_dir=lf.fed_dir / "sim",
                                 policy_text="")
                path = site.root / "node.pub"
                start = time.perf_counter()
                deploy.register_node(lf.cli_home, path, name=site.root.name)
                return time.perf_counter() - start

            def admission() -> float:
                name = f"s{next(counter)}"
                site = init_site(root / "extra" / name, site=name, federation=lf.federation.id,
                                 sim_dir=lf.fed_dir / "sim",
                                 policy_text=(lf.fed_dir / "policy.toml").read_text())
                seal_data(site, {k: np.zeros((2, 11)) if k.startswith("x") else np.zeros(2)
                                 for k in ("x", "y", "x_test", "y_test")})
                lf.sites[name] = site
                start = time.perf_counter()
                lf.admit(name)
                return time.perf_counter() - start

            admit = interleave({"register": register_only, "admit": admission})
        finally:
            lf.stop()

    report = Report("federated", "Flower 1.41 on loopback, five sites, sim evidence, TLS and "
                    "SuperNode authentication on")
    report.baseline("plain Flower round", rounds["plain"], "s")
    report.row("gated SecAgg+ round", rounds["gated"], "s", baseline=rounds["plain"],
               goal=Goal("<=", 1.10, on="ratio"))
    report.baseline("register a key (flwr supernode register)", admit["register"], "s")
    report.row("admission by attestation, per site", admit["admit"], "s",
               baseline=admit["register"])
    evidence_rows(report)
    report.emit()


if __name__ == "__main__":
    main(sys.argv[1:])
