"""Access monitoring (issue 16): access events with the authorizer's reason, per-user baselines,
explained scores for each misuse pattern, deduplicated alerts to a file and a webhook, the
evaluation on the Synthea-based simulation, and the ``medclave monitor`` commands."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medclave.auth.access import (
    AccessEmitter,
    AccessEvent,
    AccessReason,
    JsonlAccessLog,
    read_events,
    reason_of,
)
from medclave.background import BackgroundServer
from medclave.cli.main import app
from medclave.errors import MedclaveError
from medclave.monitor.alerts import FileSink, Monitor, WebhookSink
from medclave.monitor.evaluate import evaluate
from medclave.monitor.model import Baselines, Directory, Person, Scorer
from medclave.monitor.simulate import simulate

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
ALICE = "dr-alice"


def ev(at: datetime, patient: str, reason: AccessReason = "care_team", *,
       user: str = ALICE, department: str = "cardiology") -> AccessEvent:
    return AccessEvent(at=at, tenant="st-marys", user=user, patient=patient, reason=reason,
                       department=department)


def baseline_weeks() -> list[AccessEvent]:
    """Two weeks of dr-alice: 9:00-16:00, ten care-team patients a day, nothing else."""
    out = []
    for d in range(14):
        day = DAY0 + timedelta(days=d)
        if day.weekday() >= 5:
            continue
        for i in range(10):
            out.append(ev(day + timedelta(hours=9, minutes=40 * i), f"p{(d + i) % 25}"))
    return out


DIRECTORY = Directory(
    users={ALICE: Person("Hartley", "cardiology")},
    patients={**{f"p{i}": Person("Nobody", "cardiology") for i in range(25)},
              "vip": Person("Famous", "cardiology", vip=True),
              "cousin": Person("Hartley", "oncology"),
              "nurse-bo": Person("Lind", "cardiology", employee_of="cardiology"),
              "stranger": Person("Other", "cardiology")})


@pytest.fixture
def scorer() -> Scorer:
    return Scorer(Baselines.learn(baseline_weeks()), DIRECTORY)


MONDAY = DAY0 + timedelta(days=21)


def kinds(scorer: Scorer, event: AccessEvent) -> set[str]:
    return {f.kind for f in scorer.score(event).findings}


# --- access events --------------------------------------------------------------------------


@pytest.mark.parametrize(("policies", "reason"), [
    (["clinician-care-team-retrieve"], "care_team"),
    (["patient-own-history"], "self"),
    (["clinician-care-team-history", "clinician-break-glass-history"], "break_glass"),
    (["researcher-deidentified-documents"], "deidentified"),
    (["model-infer-by-role"], "other"),
    ([], "other"),
])
def test_the_reason_comes_from_the_permitting_policies(policies: list[str], reason: str
                                                       ) -> None:
    assert reason_of(policies) == reason


def test_emitted_events_reach_a_private_file_and_read_back(tmp_path: Path) -> None:
    sink = JsonlAccessLog(tmp_path / "access.jsonl")
    emitter = AccessEmitter(sink)
    sent = emitter.allowed(at=DAY0, tenant="t", user="u", patient="p",
                           policy_ids=["clinician-break-glass-documents"], purpose="scribe")
    sink.close()
    assert stat.S_IMODE((tmp_path / "access.jsonl").stat().st_mode) == 0o600
    assert list(read_events(tmp_path / "access.jsonl")) == [sent]
    assert sent.reason == "break_glass"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=200), st.dictionaries(
    st.sampled_from(["at", "tenant", "user", "patient", "reason", "purpose", "extra"]),
    st.one_of(st.text(max_size=30), st.integers(), st.none()), max_size=7).map(json.dumps)),
    max_size=5))
def test_reading_events_refuses_garbage_with_a_code(tmp_path_factory: pytest.TempPathFactory,
                                                    lines: list[str]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "events.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines))
    try:
        for event in read_events(path):
            assert isinstance(event, AccessEvent)
    except MedclaveError as exc:
        assert exc.code.startswith("input.")


def test_an_overlong_line_is_refused(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text('{"at": "' + "x" * 5000 + '"}\n')
    with pytest.raises(MedclaveError) as caught:
        list(read_events(tmp_path / "e.jsonl"))
    assert caught.value.code == "input.too_large"


# --- scoring -------------------------------------------------------------------------------


def test_a_usual_access_scores_nothing(scorer: Scorer) -> None:
    score = scorer.score(ev(MONDAY + timedelta(hours=10), "p3"))
    assert score.total == 0 and score.findings == ()


@pytest.mark.parametrize(("event", "kind"), [
    (ev(MONDAY + timedelta(hours=10), "vip", "department"), "vip"),
    (ev(MONDAY + timedelta(hours=10), "cousin", "department", department="oncology"),
     "same_surname"),
    (ev(MONDAY + timedelta(hours=10), "nurse-bo", "department"), "coworker"),
    (ev(MONDAY + timedelta(hours=3), "stranger", "department"), "hour"),
    (ev(MONDAY + timedelta(hours=10), "stranger", "other"), "unexplained"),
    (ev(MONDAY + timedelta(hours=10), "stranger", "break_glass"), "break_glass"),
    (ev(MONDAY + timedelta(hours=10), "cousin", "department", department="oncology"),
     "department"),
])
def test_each_misuse_pattern_is_found_and_explained(scorer: Scorer, event: AccessEvent,
                                                    kind: str) -> None:
    score = scorer.score(event)
    found = {f.kind: f for f in score.findings}
    assert kind in found
    assert (found[kind].points > 0 and ALICE in found[kind].why) or kind in (
        "vip", "unexplained")


def test_the_same_patients_on_the_care_team_are_not_suspicious(scorer: Scorer) -> None:
    # A VIP, a namesake or a coworker who is the user's own patient is care, not curiosity.
    for patient in ("vip", "cousin", "nurse-bo"):
        assert scorer.score(ev(MONDAY + timedelta(hours=11), patient)).total == 0


def test_bulk_export_is_found_by_volume_and_burst(scorer: Scorer) -> None:
    found: set[str] = set()
    for i in range(60):
        found |= kinds(scorer, ev(MONDAY + timedelta(hours=10, seconds=10 * i), f"p{i % 25}x"
                                  if i >= 25 else f"p{i}"))
    assert {"volume", "burst"} <= found


# --- alerts -------------------------------------------------------------------------------


def test_alerts_are_explained_deduplicated_and_private(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "alerts.jsonl")
    monitor = Monitor(Scorer(Baselines.learn(baseline_weeks()), DIRECTORY), sink)
    for i in range(20):  # twenty looks at one VIP's record over the day: one alert
        monitor.observe(ev(MONDAY + timedelta(hours=10, minutes=15 * i), "vip", "department"))
    monitor.observe(ev(MONDAY + timedelta(hours=10), "p1"))  # normal: nothing
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == 1 and monitor.dedup.suppressed == 19
    alert = json.loads(lines[0])
    assert alert["kind"] == "vip" and alert["user"] == ALICE and alert["patient"] == "vip"
    assert "flagged VIP" in alert["summary"] and "not on their care team" in alert["summary"]
    assert stat.S_IMODE((tmp_path / "alerts.jsonl").stat().st_mode) == 0o600
    # The next day the same pattern alerts again.
    assert monitor.observe(ev(MONDAY + timedelta(days=1, hours=10), "vip", "department"))
    sink.close()
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2


def test_alerts_reach_a_webhook_and_a_failed_delivery_stops_the_monitor() -> None:
    received: list[dict[str, Any]] = []
    answer = {"status": 204}
    hook = FastAPI()

    @hook.post("/alerts")
    async def alerts(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({}, status_code=answer["status"])

    with BackgroundServer(hook) as server:
        sink = WebhookSink(server.url + "/alerts")
        monitor = Monitor(Scorer(Baselines.learn(baseline_weeks()), DIRECTORY), sink)
        assert monitor.observe(ev(MONDAY + timedelta(hours=3), "stranger", "other"))
        assert received and received[0]["kind"] == "unexplained"
        assert "no care-team, consent or emergency reason" in received[0]["summary"]
        answer["status"] = 500
        with pytest.raises(MedclaveError) as caught:
            monitor.observe(ev(MONDAY + timedelta(hours=10), "vip", "department"))
        assert caught.value.code == "service.alert_undelivered"
        sink.close()
    with pytest.raises(MedclaveError) as refused:
        WebhookSink("http://alerts.example.org/hook")
    assert refused.value.code == "config.invalid"
    assert httpx.URL("http://127.0.0.1").host == "127.0.0.1"


# --- the evaluation on Synthea care relationships -------------------------------------------


def test_the_evaluation_on_synthea_relationships(fhir_bundles: Path) -> None:
    data = simulate(fhir_bundles, seed=7, train_days=14, test_days=5, instances=2, copies=12,
                    staff=3)
    assert {tag.rsplit("-", 1)[0] for _, tag in data.test if tag} == {
        "vip", "coworker", "same_surname", "bulk_export", "after_hours", "break_glass_overuse"}
    result = evaluate(data)
    assert result.normal_alert_rate <= 0.01
    assert result.auroc > 0.9
    assert result.recall_instances >= 0.75
    assert result.delay_seconds_median <= 3600
    assert set(result.examples) and all(a.summary.startswith("Unusual access by ")
                                        for a in result.examples.values())


def test_the_monitor_commands_from_simulation_to_alerts(fhir_bundles: Path, tmp_path: Path
                                                        ) -> None:
    runner = CliRunner()
    sim = runner.invoke(app, ["monitor", "simulate", "--fhir", str(fhir_bundles), "--out",
                              str(tmp_path / "sim")])
    assert sim.exit_code == 0, sim.output
    learned = runner.invoke(app, ["monitor", "learn", "--events", str(tmp_path / "sim" /
                                  "train.jsonl"), "--out", str(tmp_path / "baselines.json")])
    assert learned.exit_code == 0, learned.output
    ran = runner.invoke(app, ["monitor", "run", "--baselines", str(tmp_path / "baselines.json"),
                              "--directory", str(tmp_path / "sim" / "directory.json"),
                              "--events", str(tmp_path / "sim" / "test.jsonl"),
                              "--alerts-file", str(tmp_path / "alerts.jsonl")])
    assert ran.exit_code == 0, ran.output
    summary = json.loads(ran.output)
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert summary["alerts"] == len(alerts) > 0
    labels = json.loads((tmp_path / "sim" / "labels.json").read_text())
    assert labels  # misuse was injected, and some alert names an injected scenario's user
    test_events = (tmp_path / "sim" / "test.jsonl").read_text().splitlines()
    misusers = {json.loads(test_events[int(i)])["user"] for i in labels}
    assert misusers & {a["user"] for a in alerts}
    (tmp_path / "bad.jsonl").write_text("not an event\n")
    bad = runner.invoke(app, ["monitor", "learn", "--events", str(tmp_path / "bad.jsonl"),
                              "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and json.loads(bad.output)["error"]["code"] == "input.malformed"
