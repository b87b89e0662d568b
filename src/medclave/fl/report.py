"""The demo's story and its report: admission, federated runs, baselines, clean room, audit.

Scores are AUROC and AUPRC on the pooled held-out rows of all five sites (synthetic, so the demo
may pool them for the report; in a real federation each site evaluates on its own rows, as the
federated evaluation stage does). The federated model is read the way a member reads it: the
sealed final model opened with the federation owner's key.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from medclave.attestation import sim
from medclave.audit.note import NoteVerifier
from medclave.audit.store import SqliteLogStore
from medclave.audit.verify import verify_log
from medclave.crypto import sealed
from medclave.crypto.canonical import load_json
from medclave.errors import AuditError, MedclaveError
from medclave.fl import cohort, model
from medclave.fl.cleanroom import run_clean_room
from medclave.fl.federation import Federation
from medclave.fl.local import LocalFederation
from medclave.fl.trail import LOG_FILE, log_signer
from medclave.kbs.sealed_models import OWNER_KEY_NAME, read_key_file
from medclave.protocol.evidence import EvidenceBundle

CENTRAL_STEPS = 400


def open_final_model(fed_dir: Path, run_dir: Path) -> model.Params:
    """The sealed final model, opened with the federation owner's key, into memory."""
    owner = read_key_file(fed_dir / "owner.key", private=True)
    key = sealed.open_owner_key((run_dir / "model" / OWNER_KEY_NAME).read_bytes(), owner)
    fd, _ = sealed.open_to_memfd(run_dir / "model", key, name="medclave-fl-model")
    with open(fd, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as npz:
        return [np.asarray(npz["w"], dtype=np.float64), np.asarray(npz["b"], dtype=np.float64)]


def audit_entries(fed: Federation) -> list[dict[str, Any]]:
    """Verify the federation's log (every leaf, the tree, the signed checkpoint) with its key,
    then return its entries; ``audit.*`` refusal on any finding."""
    verifier: NoteVerifier = log_signer(fed.root, fed.id).verifier
    store = SqliteLogStore(fed.root / LOG_FILE, readonly=True)
    try:
        verify_log(store, verifier, parse_entries=False)
        out = []
        for index, data, leaf in store.entries():
            entry = load_json(data, what="an audit entry")
            if not isinstance(entry, dict):
                raise AuditError("audit.entry_invalid", f"entry {index} is not an object")
            out.append({**entry, "_index": index, "_leaf": leaf.hex()})
        return out
    finally:
        store.close()


def trace_final_model(entries: list[dict[str, Any]], run: str, model_sha256: str) -> dict[str, Any]:
    """From the final-model entry of ``run`` to each round's aggregation entry (by leaf hash),
    each round's accepted updates and each site's ingest entry. ``audit.entry_invalid`` when a
    link is missing."""
    finals = [e for e in entries if e.get("kind") == "final-model" and e.get("run") == run]
    if len(finals) != 1 or finals[0].get("model") != model_sha256:
        raise AuditError("audit.entry_invalid", "no final-model entry names this model")
    by_leaf = {e["_leaf"]: e for e in entries}
    rounds = []
    for leaf in finals[0]["rounds"]:
        agg = by_leaf.get(leaf)
        if agg is None or agg.get("kind") != "aggregation" or agg.get("run") != run:
            raise AuditError("audit.entry_invalid", f"round leaf {leaf} is not in the log")
        updates = [e for e in entries if e.get("kind") == "update" and e.get("run") == run
                   and e.get("round") == agg["round"] and e.get("message_type") == "train"]
        rounds.append({"round": agg["round"], "params": agg["params"],
                       "sites": sorted({u["site"] for u in updates})})
    ingested = {e["site"]: e["data"] for e in entries if e.get("kind") == "ingest"}
    return {"model": model_sha256, "rounds": rounds, "ingest": ingested}


def baselines(sites: list[cohort.SiteData]) -> dict[str, Any]:
    """Each site alone, and centralised training on the pooled rows."""
    pool = cohort.pooled(sites)
    x_test, y_test = cohort.preprocess(pool.x_test), pool.y_test
    out: dict[str, Any] = {"site_alone": {}}
    for s in sites:
        params = model.train(model.initial_params(), cohort.preprocess(s.x_train), s.y_train,
                             steps=CENTRAL_STEPS)
        out["site_alone"][s.site] = model.evaluate(params, x_test, y_test).as_dict()
    central = model.train(model.initial_params(), cohort.preprocess(pool.x_train), pool.y_train,
                          steps=CENTRAL_STEPS)
    out["centralised"] = model.evaluate(central, x_test, y_test).as_dict()
    return out


def run_demo(lf: LocalFederation, *, rounds: int = 3, seed: int = cohort.DEFAULT_SEED
             ) -> dict[str, Any]:
    data = cohort.make_cohort(seed)
    pool = cohort.pooled(data)
    x_test, y_test = cohort.preprocess(pool.x_test), pool.y_test
    report: dict[str, Any] = {"cohort": {
        "rows": sum(len(s.y_train) + len(s.y_test) for s in data),
        "positives": int(sum(s.y_train.sum() + s.y_test.sum() for s in data)),
        "sites": {s.site: {"rows": len(s.y_train) + len(s.y_test),
                           "positives": int(s.y_train.sum() + s.y_test.sum())} for s in data}}}
    report.update(baselines(data))
    try:
        lf.start()
        report["refused"] = _refusal_examples(lf)
        admission = {}
        for name in lf.sites:
            start = time.perf_counter()
            lf.admit(name)
            admission[name] = round(time.perf_counter() - start, 3)
        report["admission_seconds"] = admission
        for name in lf.sites:
            lf.start_node(name, extra={"demo-tamper-round": 3} if name == "d" else None)
        for run, dp in (("federated", False), ("federated-dp", True)):
            result = lf.run(run, rounds=rounds, dp=dp)
            params = open_final_model(lf.fed_dir, lf.fed_dir / "runs" / run)
            report[run] = {**model.evaluate(params, x_test, y_test).as_dict(),
                           "epsilon_by_round": [r["epsilon"] for r in result["rounds"]],
                           "delta": result["settings"]["delta"] if dp else None,
                           "excluded": result["excluded"], "model_sha256": result["model_sha256"],
                           "run": result["run"]}
    finally:
        lf.stop()
    authority = sim.SimAuthority.load_or_create(lf.fed_dir / "sim")

    def attest(nonce: bytes, runtime: dict[str, Any]) -> EvidenceBundle:
        return sim.make_bundle(authority, nonce=nonce, runtime=runtime)

    room, refusals = run_clean_room(lf.sites, attest, steps=CENTRAL_STEPS)
    report["clean_room"] = {**model.evaluate(room, x_test, y_test).as_dict(),
                            "refused_by": refusals}
    entries = audit_entries(lf.federation)
    report["audit"] = {"entries": len(entries), "verified": True, "trace": trace_final_model(
        entries, report["federated"]["run"], report["federated"]["model_sha256"])}
    return report


def _refusal_examples(lf: LocalFederation) -> dict[str, str]:
    """Two admissions that must fail, shown in the report: a replayed nonce and another site's
    evidence presented with this site's key."""
    out: dict[str, str] = {}
    nonce = lf.federation.challenge("a")
    stolen = lf.site_evidence("b", lf.federation.challenge("b"))
    for label, bundle, key in (
            ("another node key", stolen, lf.sites["a"].public_key()),
            ("unissued nonce", lf.site_evidence("a", nonce[::-1]), lf.sites["a"].public_key())):
        try:
            lf.admit("b" if label == "another node key" else "a", bundle, key)
            out[label] = "ADMITTED"
        except MedclaveError as exc:
            out[label] = exc.code
    return out
