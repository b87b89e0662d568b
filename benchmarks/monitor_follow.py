"""The access-monitor follower (issue 16): the time from an access event to its alert, and what
following costs per event.

Rows:
  event to alert, poll 0.05 s   ms from ``JsonlAccessLog`` appending an anomalous access (a VIP's
                                record opened by someone not on the care team) to its alert line
                                in the file sink, through a real ``medclave monitor run --follow``
                                subprocess polling every 0.05 s (median of the round's events)
  event to alert, poll 0.2 s    the same at the default poll interval
  score only                    µs per event for ``Monitor.observe`` on parsed events (the
                                baseline of the next row)
  follow                        µs per event for ``Follower.poll`` over the same events in a
                                file: read, parse, score, one atomic cursor write per batch

MEDCLAVE_BENCH_FOLLOW_N anomalous events per round and follower (default 20; short mode 10);
MEDCLAVE_BENCH_FOLLOW_BULK events per round for the per-event rows (default 5000; short 2000);
the rows alternate in MEDCLAVE_BENCH_ROUNDS rounds (benchmarks._common).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks._common import Report, env_int, interleave
from medclave.auth.access import AccessEvent, JsonlAccessLog
from medclave.monitor.alerts import Monitor
from medclave.monitor.follow import Follower
from medclave.monitor.model import Baselines, Directory, Person, Scorer

ROOT = Path(__file__).resolve().parents[1]
DAY = datetime(2026, 3, 2, tzinfo=UTC)
CLI = "from medclave.cli.main import app; app()"


def _history() -> list[AccessEvent]:
    """Four weeks of one clinician's care-team accesses, 9:00 to 16:00."""
    return [AccessEvent(at=DAY + timedelta(days=d, hours=9, minutes=40 * i), tenant="t",
                        user="dr-usual", patient=f"p{(d + i) % 40}", reason="care_team",
                        department="cardiology")
            for d in range(28) if (DAY + timedelta(days=d)).weekday() < 5 for i in range(10)]


def _directory(n: int) -> Directory:
    return Directory(users={"dr-usual": Person("Hartley", "cardiology")},
                     patients={f"vip{i}": Person("Famous", "cardiology", vip=True)
                               for i in range(n)})


class Follow:
    """A ``monitor run --follow`` subprocess and the files it reads and writes."""

    def __init__(self, folder: Path, poll: float, directory: Directory) -> None:
        folder.mkdir()
        (folder / "baselines.json").write_text(json.dumps(Baselines.learn(_history()).to_dict()))
        (folder / "directory.json").write_text(json.dumps(directory.to_dict()))
        self.alerts = folder / "alerts.jsonl"
        self.log = JsonlAccessLog(folder / "access.jsonl")
        self.sent = 0
        self.rng = random.Random(16)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "monitor", "run", "--follow",
             "--baselines", str(folder / "baselines.json"),
             "--directory", str(folder / "directory.json"),
             "--events", str(folder / "access.jsonl"), "--alerts-file", str(self.alerts),
             "--cursor", str(folder / "cursor"), "--poll-seconds", str(poll)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (folder / "cursor").exists():  # started: its first cursor is written
            assert time.monotonic() < deadline and self.proc.poll() is None, "follower died"
            time.sleep(0.01)

    def _count(self) -> int:
        try:
            with self.alerts.open("rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def one(self) -> float:
        """Seconds from one anomalous append, at a random moment, to its alert line."""
        # Accesses come when they come, not in step with the poll: without this pause each
        # append would land just after the previous alert, when the follower looks again at
        # once, and the figure would leave out the wait for the next poll.
        time.sleep(self.rng.uniform(0.0, 0.25))
        i = self.sent
        self.sent += 1
        # A different user each time: each event is its own alert (never deduplicated).
        event = AccessEvent(at=DAY + timedelta(days=30, hours=10, seconds=i), tenant="t",
                            user=f"u{i}", patient=f"vip{i}", reason="department",
                            department="cardiology")
        start = time.perf_counter()
        self.log(event)
        deadline = time.monotonic() + 30
        while self._count() <= i:
            assert time.monotonic() < deadline and self.proc.poll() is None, "no alert"
            time.sleep(0.001)
        return time.perf_counter() - start

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def _bulk(n: int) -> tuple[Callable[[], float], Callable[[], float]]:
    directory = _directory(0)
    baselines = Baselines.learn(_history())
    events = [AccessEvent(at=DAY + timedelta(days=35, hours=9, seconds=3 * i), tenant="t",
                          user="dr-usual", patient=f"p{i % 40}", reason="care_team",
                          department="cardiology") for i in range(n)]
    blob = b"".join(json.dumps(e.to_dict()).encode() + b"\n" for e in events)

    def score_only() -> float:
        monitor = Monitor(Scorer(baselines, directory))
        start = time.perf_counter()
        for event in events:
            monitor.observe(event)
        return (time.perf_counter() - start) / n * 1e6

    def follow() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "access.jsonl"
            path.write_bytes(blob)
            follower = Follower(path, Path(tmp) / "cursor",
                                Monitor(Scorer(baselines, directory)))
            start = time.perf_counter()
            while follower.poll():
                pass
            elapsed = time.perf_counter() - start
            assert follower.scored == n
            return elapsed / n * 1e6

    return score_only, follow


def main() -> None:
    per_round = env_int("MEDCLAVE_BENCH_FOLLOW_N", 20, minimum=3)
    bulk = env_int("MEDCLAVE_BENCH_FOLLOW_BULK", 5000, minimum=100)
    with tempfile.TemporaryDirectory() as tmp:
        directory = _directory(per_round * 64)
        fast = Follow(Path(tmp) / "fast", 0.05, directory)
        default = Follow(Path(tmp) / "default", 0.2, directory)
        try:
            def latency(follower: Follow) -> Callable[[], float]:
                return lambda: statistics.median(
                    follower.one() for _ in range(per_round)) * 1000
            got = interleave({"fast": latency(fast), "default": latency(default)})
        finally:
            fast.stop()
            default.stop()
    score_only, follow = _bulk(bulk)
    cost = interleave({"score": score_only, "follow": follow})
    report = Report("monitor_follow", f"access-monitor follower: {per_round} alerts per round "
                                      f"and poll interval; {bulk} events per round for the "
                                      "per-event cost")
    report.row("event to alert, poll 0.05 s", got["fast"], "ms")
    report.row("event to alert, poll 0.2 s (default)", got["default"], "ms")
    report.baseline("score only (Monitor.observe)", cost["score"], "µs/event")
    report.row("follow (read, parse, score, cursor)", cost["follow"], "µs/event",
               baseline=cost["score"])
    report.note("event to alert: wall time from the append (at a random moment, 0 to 0.25 s "
                "after the previous alert) to the alert line, through a real subprocess: on "
                "average half a poll interval plus reading, scoring and the two writes.")
    report.emit()


if __name__ == "__main__":
    main()
