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

A round's time is the ServerApp's own (from configure_fit to the aggregate, result.json), one
Flower round per run; each benchmark round runs each configuration once, alternating
(benchmarks._common.interleave). Goal for the gated round: at most 10% over plain Flower.
Flower starts a ClientApp process per message and SuperNodes poll for work every three seconds,
so both rows are dominated by Flower's own round trips; the gated round has two more of them
per round (the roll call and SecAgg+'s extra stages) than FedAvg's single fit stage.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import Goal, Report, interleave
from medclave.fl import deploy
from medclave.fl.local import LocalFederation
from medclave.fl.site import init_site, seal_data


def main(argv: list[str] | None = None) -> None:
    del argv  # no options: MEDCLAVE_BENCH_ROUNDS sets the rounds (minimum 5)
    logging.getLogger("medclave.sim").setLevel(logging.ERROR)
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
    report.emit()


if __name__ == "__main__":
    main(sys.argv[1:])
