"""``medclave monitor run --follow`` (issue 16): a real subprocess tails the access log as a
service appends to it (``JsonlAccessLog``), an anomalous access reaches the file sink within a
bounded wait, SIGTERM stops it cleanly with its cursor saved, and a restarted follower neither
re-scores old events nor raises an alert again; in-process, the cursor's edge cases (a line
still being written, a malformed line, a sink that fails, a replaced file)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.auth.access import AccessEvent, JsonlAccessLog
from medclave.errors import InputError, ServiceError
from medclave.monitor.alerts import Alert, Monitor
from medclave.monitor.follow import Follower, cursor_state
from medclave.monitor.model import Baselines, Scorer
from tests.monitor.test_monitor import ALICE, DIRECTORY, MONDAY, baseline_weeks, ev

ROOT = Path(__file__).resolve().parents[2]
CLI = "from medclave.cli.main import app; app()"
WAIT = 20.0  # seconds: the bound on a wait in a failing test, far above the measured time


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_until(probe: Any, timeout: float = WAIT) -> float:
    """Seconds until ``probe()`` holds (polled every 5 ms)."""
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < timeout, "never happened"
        time.sleep(0.005)
    return time.monotonic() - started


class Run:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events = folder / "access.jsonl"
        self.alerts = folder / "alerts.jsonl"
        self.cursor = folder / "monitor.cursor"
        (folder / "baselines.json").write_text(json.dumps(
            Baselines.learn(baseline_weeks()).to_dict()))
        (folder / "directory.json").write_text(json.dumps(DIRECTORY.to_dict()))

    def start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "monitor", "run", "--follow",
             "--baselines", str(self.folder / "baselines.json"),
             "--directory", str(self.folder / "directory.json"),
             "--events", str(self.events), "--alerts-file", str(self.alerts),
             "--cursor", str(self.cursor), "--poll-seconds", "0.05"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return proc

    def caught_up(self) -> bool:
        return (self.cursor.exists()
                and cursor_state(self.cursor)["offset"] == self.events.stat().st_size)

    @staticmethod
    def stop(proc: subprocess.Popen[str]) -> dict[str, int]:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err[-2000:]
        summary: dict[str, int] = json.loads(out)
        return summary


def test_the_follower_alerts_promptly_and_resumes_without_a_duplicate(tmp_path: Path) -> None:
    run = Run(tmp_path)
    access = JsonlAccessLog(run.events)  # what a service appends with
    access(ev(MONDAY + timedelta(hours=10), "p1"))  # usual care: scored, no alert
    first = run.start()
    try:
        wait_until(run.caught_up)
        assert not lines(run.alerts)
        access(ev(MONDAY + timedelta(hours=10, minutes=5), "vip", "department"))
        delay = wait_until(lambda: len(lines(run.alerts)) == 1)
        # A second look at the same VIP the same day: deduplicated.
        access(ev(MONDAY + timedelta(hours=11), "vip", "department"))
        wait_until(run.caught_up)
    finally:
        summary = Run.stop(first)
    print(f"event-to-alert time through the follower: {delay * 1000:.0f} ms (poll 50 ms)")
    assert summary == {"events": 3, "alerts": 1, "suppressed": 1}
    alert = lines(run.alerts)[0]
    assert alert["kind"] == "vip" and alert["user"] == ALICE and alert["patient"] == "vip"
    assert cursor_state(run.cursor)["offset"] == run.events.stat().st_size
    assert stat.S_IMODE(run.cursor.stat().st_mode) == 0o600

    # Restarted: the old events are not scored again; the VIP's dedup window survived.
    access(ev(MONDAY + timedelta(hours=12), "vip", "department"))
    second = run.start()
    try:
        access(ev(MONDAY + timedelta(hours=12, minutes=30), "cousin", "department",
                  department="oncology"))
        wait_until(lambda: len(lines(run.alerts)) == 2)
        wait_until(run.caught_up)
    finally:
        summary = Run.stop(second)
    access.close()
    assert summary == {"events": 2, "alerts": 1, "suppressed": 2}
    assert [a["kind"] for a in lines(run.alerts)] == ["vip", "same_surname"]


# --- in process -----------------------------------------------------------------------------


def follower(tmp_path: Path, *sinks: Any) -> Follower:
    monitor = Monitor(Scorer(Baselines.learn(baseline_weeks()), DIRECTORY), *sinks)
    return Follower(tmp_path / "access.jsonl", tmp_path / "cursor", monitor)


def line(event: AccessEvent) -> bytes:
    return json.dumps(event.to_dict()).encode() + b"\n"


def test_a_line_still_being_written_waits_for_its_end(tmp_path: Path) -> None:
    got: list[Alert] = []
    f = follower(tmp_path, got.append)
    whole = line(ev(MONDAY + timedelta(hours=10), "vip", "department"))
    (tmp_path / "access.jsonl").write_bytes(whole[:20])
    assert f.poll() == 0 and f.offset == 0 and not got
    with (tmp_path / "access.jsonl").open("ab") as fh:
        fh.write(whole[20:])
    assert f.poll() == 1 and f.offset == len(whole) and len(got) == 1


def test_a_malformed_line_stops_the_follower_at_that_line(tmp_path: Path) -> None:
    good = line(ev(MONDAY + timedelta(hours=10), "p1"))
    (tmp_path / "access.jsonl").write_bytes(good + b'{"not": "an event"}\n' + good)
    f = follower(tmp_path)
    with pytest.raises(InputError) as refused:
        f.poll()
    assert refused.value.code == "input.malformed" and f"byte {len(good)}" in str(refused.value)
    assert cursor_state(tmp_path / "cursor")["offset"] == len(good)
    with pytest.raises(InputError):  # a restart stops at the same line: never skipped
        follower(tmp_path).poll()


def test_an_alert_that_could_not_be_delivered_is_delivered_after_a_restart(tmp_path: Path
                                                                           ) -> None:
    def down(alert: Alert) -> None:
        raise ServiceError("service.alert_undelivered", "webhook answered 503")

    (tmp_path / "access.jsonl").write_bytes(
        line(ev(MONDAY + timedelta(hours=10), "p1"))
        + line(ev(MONDAY + timedelta(hours=10, minutes=5), "vip", "department")))
    with pytest.raises(ServiceError):
        follower(tmp_path, down).poll()
    got: list[Alert] = []
    again = follower(tmp_path, got.append)
    assert again.poll() == 1
    assert [a.kind for a in got] == ["vip"]  # not lost, not suppressed by the failed try


def test_a_replaced_file_is_read_from_its_start(tmp_path: Path) -> None:
    got: list[Alert] = []
    f = follower(tmp_path, got.append)
    path = tmp_path / "access.jsonl"
    path.write_bytes(line(ev(MONDAY + timedelta(hours=10), "p1")) * 3)
    assert f.poll() == 3
    path.unlink()
    path.write_bytes(line(ev(MONDAY + timedelta(hours=10, minutes=5), "vip", "department")))
    assert f.poll() == 1 and [a.kind for a in got] == ["vip"]


# --- bounded and fuzzed: whatever is appended, the follower scores it or refuses it with a code

FIELDS = st.sampled_from(["at", "tenant", "user", "patient", "reason", "purpose", "department",
                          "request_id", "extra"])
VALUES = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30),
                   st.lists(st.integers(), max_size=3), st.just("2026-03-23T10:00:00+00:00"),
                   st.just("care_team"), st.just("retrieval"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.dictionaries(FIELDS, VALUES, max_size=9).map(lambda d: json.dumps(d).encode()),
    st.builds(lambda e: json.dumps(e.to_dict()).encode(), st.just(ev(MONDAY, "vip", "other")))),
    max_size=6))
def test_arbitrary_appended_lines_are_scored_or_refused_with_a_code(chunks: list[bytes]
                                                                    ) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "access.jsonl").write_bytes(b"\n".join(chunks) + b"\n")
        f = follower(folder)
        try:
            while f.poll():
                pass
        except (InputError, ServiceError) as exc:
            assert exc.code.startswith("input.")
        # Whatever happened, the cursor reads back, and points at a line boundary.
        again = follower(folder)
        assert again.offset == 0 or (folder / "access.jsonl").read_bytes()[
            again.offset - 1:again.offset] == b"\n"


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20).map(lambda v: json.dumps(
        {"format": "medclave-monitor-cursor/1", "offset": 0, "identity": None,
         "scorer": v, "dedup": v}).encode())))
def test_a_damaged_cursor_is_refused_with_a_code(blob: bytes) -> None:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cursor").write_bytes(blob)
        try:
            follower(Path(tmp))
        except InputError as exc:
            assert exc.code in ("input.malformed", "input.too_large")
