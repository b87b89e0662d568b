"""One real federation on loopback, shared by every test here: flower-superlink and five
flower-supernode processes (TLS, SuperNode authentication on), admitted by attestation, one
``flwr run`` of three gated SecAgg+ rounds with central DP.

The story the run carries (node configuration, demo fault injection on sim):
- site ``e`` goes down in the middle of round 2 (after SecAgg+ key sharing): the round completes;
- site ``d``'s evidence reports other training code from round 3: dropped from round 3 on;
- site ``b`` talks to the SuperLink through a recording TLS relay (relay.py): what the SuperLink
  receives from and sends to ``b`` is searched for ``b``'s rows.

Flower starts a process per message on each SuperNode; on a loaded 2-core machine the run takes
minutes, hence one module-scoped federation and a bounded timeout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medclave.fl import cohort, model
from medclave.fl.local import LocalFederation
from medclave.fl.report import audit_entries, open_final_model, trace_final_model
from medclave.fl.trail import LOG_FILE
from tests.fl.relay import RecordingRelay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROUNDS = 3


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("flower-superlink") is None and not (
            Path(__import__("sys").executable).parent / "flower-superlink").exists():
        pytest.fail("flwr's console scripts are not installed")
    root = tmp_path_factory.mktemp("federation")
    lf = LocalFederation.create(root)
    relay = None
    try:
        lf.start()
        for name in lf.sites:
            lf.admit(name)
        tls = lf.fed_dir / "tls"
        relay = RecordingRelay(upstream_port=lf.port, cert=tls / "server.pem",
                               key=tls / "server.key", ca=tls / "ca.pem").start()
        extra: dict[str, dict[str, int | str]] = {"d": {"demo-tamper-round": 3},
                                                 "e": {"demo-drop-round": 2}}
        for name in lf.sites:
            lf.start_node(name, extra=extra.get(name),
                          superlink=f"127.0.0.1:{relay.port}" if name == "b" else None)
        result = lf.run("e2e", rounds=ROUNDS, dp=True, timeout=1200)
        yield {"lf": lf, "result": result, "recording": relay.recording}
    finally:
        lf.stop()
        if relay is not None:
            relay.stop()


def test_the_run_completes_every_round(federation: dict[str, Any]) -> None:
    rounds = federation["result"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["params"] for r in rounds)


def test_a_site_dropping_mid_round_does_not_stop_secagg(federation: dict[str, Any]) -> None:
    result = federation["result"]
    by_round = {r["round"]: r["counted"] for r in result["rounds"]}
    assert by_round[1] == 5
    assert by_round[2] == 4, "e went down in round 2: SecAgg+ completed with the other four"
    dropped = [v for v in result["verdicts"] if v["site"] == "e" and not v["accepted"]]
    assert [(v["round"], v["code"]) for v in dropped] == [(2, "fl.run_failed")]


def test_a_site_whose_evidence_fails_in_round_3_is_dropped_from_round_3_on(
        federation: dict[str, Any]) -> None:
    result = federation["result"]
    assert result["excluded"] == {"d": "attestation.measurement_mismatch"}
    accepted_d = {v["round"] for v in result["verdicts"]
                  if v["site"] == "d" and v["accepted"] and v["message_type"] == "train"}
    assert accepted_d == {1, 2}
    refused_d = [(v["round"], v["code"]) for v in result["verdicts"]
                 if v["site"] == "d" and not v["accepted"]]
    assert refused_d == [(3, "attestation.measurement_mismatch")]
    trace = trace_final_model(audit_entries(federation["lf"].federation), result["run"],
                              result["model_sha256"])
    sites_by_round = {r["round"]: r["sites"] for r in trace["rounds"]}
    assert "d" in sites_by_round[1] and "d" in sites_by_round[2]
    assert "d" not in sites_by_round[3]
    assert result["evaluation"]["sites"] == 4  # d is not asked to evaluate either


def test_epsilon_is_reported_and_grows_with_rounds(federation: dict[str, Any]) -> None:
    eps = [r["epsilon"] for r in federation["result"]["rounds"]]
    assert all(isinstance(e, float) and e > 0 for e in eps)
    assert eps[0] < eps[1] < eps[2]


def test_the_audit_log_verifies_and_links_the_final_model_to_every_round(
        federation: dict[str, Any]) -> None:
    lf, result = federation["lf"], federation["result"]
    trace = trace_final_model(audit_entries(lf.federation), result["run"], result["model_sha256"])
    assert [r["round"] for r in trace["rounds"]] == [1, 2, 3]
    assert [r["params"] for r in trace["rounds"]] == [r["params"] for r in result["rounds"]]
    assert sorted(trace["ingest"]) == sorted(lf.sites)
    params = open_final_model(lf.fed_dir, lf.fed_dir / "runs" / "e2e")
    assert params[0].shape == (len(cohort.FEATURES),)


def test_a_changed_log_entry_fails_verification(federation: dict[str, Any],
                                                tmp_path: Path) -> None:
    import sqlite3

    from medclave.errors import AuditError
    from medclave.fl.federation import Federation

    lf = federation["lf"]
    copy = tmp_path / "fed"
    shutil.copytree(lf.fed_dir, copy, ignore=shutil.ignore_patterns("*-home", "app", "logs"))
    with sqlite3.connect(copy / LOG_FILE) as db:
        # Whoever holds the file can drop the append-only guards; verification must catch it.
        for (name,) in db.execute("select name from sqlite_master where type='trigger'").fetchall():
            db.execute(f"drop trigger {name}")
        idx, data = db.execute("select idx, data from entries where idx = 3").fetchone()
        db.execute("update entries set data = ? where idx = ?",
                   (bytes(data).replace(b'"kind"', b'"kinD"'), idx))
    with pytest.raises(AuditError):
        audit_entries(Federation(copy))


def test_no_raw_row_crosses_the_superlink(federation: dict[str, Any]) -> None:
    lf = federation["lf"]
    recording: bytes = federation["recording"]
    data = lf.sites["b"].load_data()
    # The control: the recording holds the payload in the clear (the final model's weights
    # were sent to b for evaluation), so a row would be found if it were there.
    final = open_final_model(lf.fed_dir, lf.fed_dir / "runs" / "e2e")
    assert final[0].astype("<f8").tobytes() in recording
    rows = np.vstack([data["x"], data["x_test"]])
    for encoded in (rows, cohort.preprocess(rows)):
        for dtype in ("<f8", "<f4"):
            for row in encoded.astype(dtype):
                # Three consecutive features of a row: far less than a row, still never seen.
                assert row[:3].tobytes() not in recording
                assert row[3:6].tobytes() not in recording
    for row in rows[:200]:
        text = ",".join(f"{v:g}" for v in row[:3]).encode()
        assert text not in recording


def test_federated_auroc_is_at_least_95_percent_of_centralised(
        federation: dict[str, Any]) -> None:
    lf = federation["lf"]
    sites = cohort.make_cohort()
    pool = cohort.pooled(sites)
    x_test = cohort.preprocess(pool.x_test)
    central = model.train(model.initial_params(), cohort.preprocess(pool.x_train), pool.y_train,
                          steps=400)
    central_auroc = model.evaluate(central, x_test, pool.y_test).auroc
    fed = model.evaluate(open_final_model(lf.fed_dir, lf.fed_dir / "runs" / "e2e"), x_test,
                         pool.y_test).auroc
    assert fed >= 0.95 * central_auroc, (fed, central_auroc)
