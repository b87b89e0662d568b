"""The Flower ServerApp: FedAvg behind the attestation gate, SecAgg+ and central DP.

Flower's own pieces do the federated work: ``DefaultWorkflow`` with ``SecAggPlusWorkflow`` as the
fit workflow (the aggregator sees only the sum of masked updates), the legacy ``FedAvg`` strategy
wrapped in ``DifferentialPrivacyClientSideFixedClipping`` (Gaussian noise on the aggregate; sites
clip with ``fixedclipping_mod``). Medclave adds :class:`~medclave.fl.gate.GatedGrid` under all of
it, the (ε, δ) accountant, the audit trail and the sealed final model.

Run configuration (``flwr run -c``; defaults in the app's pyproject.toml, deploy.APP_CONFIG):
``federation-dir``, ``run-dir``, ``rounds``, ``local-steps``, ``gate``, ``secagg``, ``dp``,
``noise-multiplier``, ``clipping-norm``, ``delta``, ``min-sites``, ``wait-seconds``.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import ServerApp

from medclave.attestation import sim
from medclave.fl import cohort, model
from medclave.fl.federation import Federation, write_json
from medclave.fl.gate import Admitted, GatedGrid, Verdict
from medclave.fl.privacy import epsilon_spent, round_noise_multiplier
from medclave.fl.trail import Trail, params_digest
from medclave.kbs.sealed_models import read_key_file, seal_model
from medclave.protocol.evidence import EvidenceBundle

app = ServerApp()


def _weighted(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    total = sum(n for n, _ in metrics) or 1
    return {k: sum(n * float(m[k]) for n, m in metrics) / total for k in ("auroc", "auprc")
            if all(k in m for _, m in metrics)}


class Recorder(Strategy):
    """Delegates to ``inner`` and writes each stage to the trail: round configurations,
    aggregates (after the DP noise), the ε spent so far and the final evaluation."""

    def __init__(self, inner: Strategy, trail: Trail, settings: dict[str, Any],
                 sampled: int) -> None:
        self.inner = inner
        self.trail = trail
        self.settings = settings
        self.sampled = sampled
        self.multipliers: list[float] = []
        self.rounds: list[dict[str, Any]] = []
        self.aggregation_leaves: list[str] = []
        self.evaluation: dict[str, Any] = {}
        self.before_round: Callable[[int], object] = lambda _round: None
        self._started = time.perf_counter()

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def _enough(self, server_round: int, client_manager: ClientManager) -> bool:
        """Fewer verified sites than ``min-sites`` left: skip the stage rather than wait for
        sites that were excluded (Flower's sampler would wait a day for them)."""
        available = client_manager.num_available()
        if available >= int(self.settings["min-sites"]):
            return True
        self.trail.append("halted", round=server_round, available=available,
                          code="fl.too_few_sites")
        return False

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self._started = time.perf_counter()
        self.before_round(server_round)
        if not self._enough(server_round, client_manager):
            return []
        out: list[tuple[ClientProxy, FitIns]] = self.inner.configure_fit(
            server_round, parameters, client_manager)
        config = dict(out[0][1].config) if out else {}
        self.trail.append("round-config", round=server_round, config=config,
                          sites=len(out))
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        eps = None
        if self.settings["dp"]:
            self.multipliers.append(round_noise_multiplier(
                float(self.settings["noise-multiplier"]), len(results), self.sampled))
            eps = epsilon_spent(self.multipliers, float(self.settings["delta"]))
        digest = params_digest(parameters_to_ndarrays(params)) if params else ""
        leaf = self.trail.append("aggregation", round=server_round, counted=len(results),
                                 params=digest, epsilon=eps,
                                 delta=self.settings["delta"] if eps is not None else None)
        self.aggregation_leaves.append(leaf["leaf"])
        self.rounds.append({"round": server_round, "counted": len(results), "params": digest,
                            "epsilon": eps,
                            "seconds": round(time.perf_counter() - self._started, 3)})
        return params, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round < int(self.settings["rounds"]):
            return []  # evaluate the final model only: each stage is a round trip per site
        if not self._enough(server_round, client_manager):
            return []
        out: list[tuple[ClientProxy, EvaluateIns]] = self.inner.configure_evaluate(
            server_round, parameters, client_manager)
        return out

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        self.evaluation = {"round": server_round, "sites": len(results), "loss": loss,
                           **{k: float(v) for k, v in metrics.items()}}
        self.trail.append("evaluation", **self.evaluation)
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        return None


def _wait_for_nodes(grid: Grid, wanted: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not wanted <= set(grid.get_node_ids()) and time.monotonic() < deadline:
        time.sleep(0.5)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = dict(context.run_config)
    fed = Federation(Path(str(settings["federation-dir"])))
    run_dir = Path(str(settings["run-dir"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    members = fed.members()
    trail = Trail(fed.root, fed.id, str(context.run_id))
    verdicts: list[dict[str, Any]] = []
    try:
        authority = sim.SimAuthority.load_or_create(fed.root / "sim")
        trail.append("preprocessing", code=_source_digest(),
                     measurement=sim.code_measurement().hex(),
                     sites={m.site: m.evidence_digest for m in members.values()})
        _wait_for_nodes(grid, {m.node_id for m in members.values()},
                        float(settings["wait-seconds"]))

        def on_verdict(v: Verdict) -> None:
            verdicts.append(v.as_dict())
            if v.accepted:
                trail.append("update", round=v.round, site=v.site, update=v.update,
                             evidence=v.evidence_digest, message_type=v.message_type)
            else:
                trail.append("dropped", round=v.round, site=v.site, code=v.code,
                             message_type=v.message_type)

        def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
            return sim.make_bundle(authority, nonce=nonce, runtime=runtime)

        gated = GatedGrid(grid, federation=fed.id,
                          members={m.node_id: Admitted(m.site, m.node_key)
                                   for m in members.values()},
                          appraiser=fed.appraiser(), attest=attest, on_verdict=on_verdict)
        use_grid: Grid = gated if settings["gate"] else grid
        n = len(members)
        min_sites = int(settings["min-sites"])
        dp = bool(settings["dp"])
        steps = int(settings["local-steps"])
        base = FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=min_sites,
                      min_evaluate_clients=min_sites, min_available_clients=min_sites,
                      on_fit_config_fn=lambda r: {"server_round": r, "local_steps": steps,
                                                  "uniform_weights": dp},
                      evaluate_metrics_aggregation_fn=_weighted,
                      fit_metrics_aggregation_fn=lambda _m: {})
        strategy: Strategy = base
        if dp:
            strategy = DifferentialPrivacyClientSideFixedClipping(
                base, float(settings["noise-multiplier"]), float(settings["clipping-norm"]), n)
        recorder = Recorder(strategy, trail, settings, n)
        if settings["gate"]:
            recorder.before_round = lambda r: gated.roll_call(
                r, timeout=float(settings["wait-seconds"]))
        legacy = LegacyContext(context=context, config=ServerConfig(
            num_rounds=int(settings["rounds"])), strategy=recorder)
        # max_weight: the largest site's row count must fit SecAgg+'s quantised weight range.
        fit = (SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=min_sites,
                                  max_weight=100_000.0, timeout=float(settings["wait-seconds"]))
               if settings["secagg"] else None)
        DefaultWorkflow(fit_workflow=fit)(use_grid, legacy)
        arrays = parameters_to_ndarrays(arrayrecord_to_parameters(
            legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))
        final = _seal_final(fed, run_dir, arrays)
        trail.append("final-model", model=final, rounds=recorder.aggregation_leaves,
                     excluded=sorted(members_by_id(members)[n_] for n_ in gated.excluded))
        write_json(run_dir / "result.json", {
            "federation": fed.id, "run": str(context.run_id), "settings": settings,
            "rounds": recorder.rounds, "evaluation": recorder.evaluation,
            "verdicts": verdicts, "model_sha256": final,
            "excluded": {members_by_id(members)[k]: v for k, v in gated.excluded.items()},
        })
    finally:
        trail.close()


def members_by_id(members: dict[str, Any]) -> dict[int, str]:
    return {m.node_id: m.site for m in members.values()}


def _source_digest() -> str:
    """SHA-256 of the preprocessing and model source: what every site runs on its rows."""
    import hashlib

    h = hashlib.sha256()
    for mod in (cohort, model):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()


def _seal_final(fed: Federation, run_dir: Path, arrays: list[Any]) -> str:
    """Seal the final model (sealed-model format, key sealed to the federation's owner key);
    returns the plaintext SHA-256, the digest inference policies name."""
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        plain = Path(tmp) / "final-model"
        with plain.open("wb") as f:
            np.savez(f, w=arrays[0], b=arrays[1])
        result = seal_model(plain, run_dir / "model", owner=fed.id,
                            owner_public_key=read_key_file(fed.root / "owner.key.pub", private=False),
                            model_format="npz")
    return result.manifest.plaintext_sha256
