"""kill -9 in the middle of bursts of appends: every acknowledged entry survives, none is torn,
and the log verifies after each restart."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from medclave.audit.entry import parse_entry
from medclave.audit.note import NoteSigner
from medclave.audit.store import SqliteLogStore
from medclave.audit.verify import verify_log
from tests.audit._builders import make_entry

APPENDER = Path(__file__).with_name("_appender.py")


def _run_until_killed(db: Path, signer: NoteSigner, rng: random.Random) -> int:
    """Start an appender, let it acknowledge some bursts, SIGKILL it; return acked size."""
    proc = subprocess.Popen(
        [sys.executable, str(APPENDER), str(db), signer.skey(), str(rng.randint(0, 1 << 30))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "ready", ready
        acked = int(ready[1])
        for _ in range(rng.randint(1, 6)):
            kind, first, count = proc.stdout.readline().split()
            assert kind == "ack" and int(first) == acked
            acked += int(count)
        time.sleep(rng.uniform(0, 0.05))  # land somewhere inside the next burst
    finally:
        proc.kill()  # SIGKILL: no handler, no flush, no rollback by the child
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    return acked


def test_kill_9_during_bursts(tmp_path: Path, log_signer: NoteSigner) -> None:
    db = tmp_path / "audit.sqlite3"
    rng = random.Random(20250301)
    acked = 0
    for _ in range(5):
        acked = _run_until_killed(db, log_signer, rng)
        store = SqliteLogStore(db, readonly=True)
        try:
            report = verify_log(store, log_signer.verifier)
            assert report.size >= acked  # every acknowledged entry is there
            assert report.latest_checkpoint == report.size  # each batch came with its checkpoint
            for index, data, _leaf in store.entries():
                assert parse_entry(data) == make_entry(index)  # and none is torn
        finally:
            store.close()
    assert acked > 0
