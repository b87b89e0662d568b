"""Sealed conversations and the crisis screen (docs/triage.md).

Figures, each measured in alternating rounds against its baseline (benchmarks._common):
  turn, plaintext SQLite   read a conversation's history (rows of role and text) and insert one
                           turn, in one SQLite file in WAL mode: what an unsealed chat store does
  turn, sealed             the same turn sealed: open the whole history (derive the key, open
                           and verify every record and the chain), seal the turn, re-seal the
                           head, write both in one transaction (SealedConversations.append)
  open 200, plaintext      read a 200-turn conversation's rows
  open 200, sealed         open and verify a 200-turn sealed conversation
  screen, normalise only   the screen's text normalisation alone, per message
  screen                   the full crisis screen (every lexicon rule), per message

Per round: MEDCLAVE_BENCH_TRIAGE_TURNS appends (default 20) on a conversation that already has
20 turns; MEDCLAVE_BENCH_TRIAGE_OPENS opens (default 5); the screening set
(tests/apps/triage/screening_set.toml) screened 5 times. ``python -m benchmarks.triage``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import Report, env_int, interleave
from medclave.apps.triage.screening import default_lexicon, normalise, screen
from medclave.enclave.sealing.conversations import SealedConversations
from medclave.enclave.sealing.roots import BrokerSealingRoots, SealingRoot
from medclave.enclave.sealing.store import SqliteSealedStore

TENANT, SUBJECT = "st-marys", "patient-bench"
TEXT = ("I have not been sleeping well and the worry keeps going round in my head; "
        "some days it is hard to get out of bed and I do not know who to talk to.")
SET = Path(__file__).resolve().parent.parent / "tests" / "apps" / "triage" / "screening_set.toml"


def _clock() -> datetime:
    return datetime.now(UTC)


class Plain:
    """The baseline: the same conversation in plaintext SQLite."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE turns (conversation TEXT, idx INTEGER, turn TEXT, "
                        "PRIMARY KEY (conversation, idx))")
        self.next = 0

    def new(self, turns: int) -> str:
        conv = f"plain-{self.next}"
        self.next += 1
        for _ in range(turns):
            self.turn(conv)
        return conv

    def history(self, conv: str) -> list[dict[str, object]]:
        rows = self.db.execute("SELECT turn FROM turns WHERE conversation=? ORDER BY idx",
                               (conv,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def turn(self, conv: str) -> None:
        history = self.history(conv)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO turns VALUES (?, ?, ?)", (conv, len(history), json.dumps(
            {"role": "user", "content": TEXT, "at": 0})))
        self.db.execute("COMMIT")


def _per_item_ms(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def main(argv: list[str] | None = None) -> None:
    turns = env_int("MEDCLAVE_BENCH_TRIAGE_TURNS", 20)
    opens = env_int("MEDCLAVE_BENCH_TRIAGE_OPENS", 5)
    root = os.urandom(32)
    share = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as tmp:
        store = SqliteSealedStore(Path(tmp) / "sealed.sqlite3")
        sealed = SealedConversations(
            BrokerSealingRoots(lambda t, v: SealingRoot(1, root), clock=_clock), store,
            clock=_clock, max_turns=10_000)
        plain = Plain(Path(tmp) / "plain.sqlite3")
        turn = {"role": "user", "content": TEXT, "at": 0}

        def sealed_new(n: int) -> str:
            conv = sealed.create(TENANT, SUBJECT, share, {}).conversation
            for _ in range(n):
                sealed.append(TENANT, SUBJECT, conv, share, turn)
            return conv

        def plain_turns() -> float:
            conv = plain.new(20)
            return _per_item_ms(lambda: plain.turn(conv), turns)

        def sealed_turns() -> float:
            conv = sealed_new(20)
            return _per_item_ms(lambda: sealed.append(TENANT, SUBJECT, conv, share, turn),
                                turns)

        long_plain, long_sealed = plain.new(200), sealed_new(200)
        assert len(sealed.open(TENANT, SUBJECT, long_sealed, share).turns) == 200
        texts = [m["text"] for m in tomllib.loads(SET.read_text("utf-8"))["m"]]
        lexicon = default_lexicon()

        values = interleave({
            "plain turn": plain_turns,
            "sealed turn": sealed_turns,
            "plain open": lambda: _per_item_ms(lambda: plain.history(long_plain), opens),
            "sealed open": lambda: _per_item_ms(
                lambda: sealed.open(TENANT, SUBJECT, long_sealed, share), opens),
            "normalise": lambda: _per_item_ms(
                lambda: [normalise(t) for t in texts], 5) / len(texts) * 1000,
            "screen": lambda: _per_item_ms(
                lambda: [screen(t, lexicon) for t in texts], 5) / len(texts) * 1000,
        })
        store.close()
        plain.db.close()

    report = Report("triage", "Sealed conversations and the crisis screen")
    report.baseline("turn, plaintext SQLite", values["plain turn"], "ms",
                    "history 20-40 turns, read + insert")
    report.row("turn, sealed", values["sealed turn"], "ms", baseline=values["plain turn"],
               note="open + verify history, seal turn and head")
    report.baseline("open 200 turns, plaintext", values["plain open"], "ms")
    report.row("open 200 turns, sealed", values["sealed open"], "ms",
               baseline=values["plain open"], note="every record and the chain verified")
    report.baseline("screen, normalise only", values["normalise"], "us/msg")
    report.row("screen", values["screen"], "us/msg", baseline=values["normalise"],
               note=f"{len(lexicon.rules)} rules, {len(texts)} messages of the screening set")
    flagged = sum(screen(t, lexicon).crisis for t in texts)
    report.note(f"screening set: {flagged} of {len(texts)} messages flagged")
    report.emit()


if __name__ == "__main__":
    main()
