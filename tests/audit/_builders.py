"""Builders shared by the audit tests: entries, keys, a deterministic engine, and logs (with
the rollback attack on them)."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medclave.audit.entry import (
    AttestationSummary,
    AuditEntry,
    Authorization,
    Params,
    commit,
    format_time,
    pseudonym,
)
from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.store import MAX_LOG_SIZE

ORIGIN = "medclave.example/audit/test-1"
TENANT_KEY = hashlib.sha256(b"tenant key for tests").digest()
MODEL = hashlib.sha256(b"model weights").hexdigest()
BUILD = "llama.cpp-b4500-cpu"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def fake_engine(prompt: str, params: Params) -> str:
    """Deterministic in (prompt, params), as llama.cpp is for a fixed seed and build."""
    digest = hashlib.sha256(f"{prompt}|{params.seed}|{params.temperature}".encode()).hexdigest()
    return f"answer {digest[:24]}"


def make_entry(
    i: int,
    *,
    prompt: str | None = None,
    documents: tuple[str, ...] = ("DocumentReference/a", "DocumentReference/b"),
    decision: str = "allow",
    break_glass: bool = False,
    salt: str | None = None,
) -> AuditEntry:
    prompt = f"Summarise the chart of patient {i}" if prompt is None else prompt
    salt = salt or hashlib.sha256(i.to_bytes(8, "big")).hexdigest()[:32]
    params = Params(temperature=0.7, top_p=0.95, max_tokens=512, seed=1000 + i)
    answer = fake_engine(prompt, params) if decision == "allow" else None
    return AuditEntry(
        time=format_time(T0 + timedelta(seconds=i)),
        request_id=f"req-{i:06d}",
        tenant="st-mary",
        user=pseudonym(TENANT_KEY, "user", f"dr-{i % 7}"),
        patient=pseudonym(TENANT_KEY, "patient", f"mrn-{i % 11}"),
        action="inference",
        model_digest=MODEL,
        engine_build=BUILD,
        evidence_digest=hashlib.sha256(b"evidence").hexdigest(),
        attestation=AttestationSummary(platform="sevsnp", status="affirming", secure=True),
        params=params,
        salt=salt,
        prompt=commit(TENANT_KEY, "prompt", salt, prompt.encode()),
        answer=None if answer is None else commit(TENANT_KEY, "answer", salt, answer.encode()),
        documents=tuple(commit(TENANT_KEY, "document", salt, d.encode()) for d in documents),
        authorization=Authorization(decision=decision, reason="policy:clinician-own-patients"),
        break_glass=break_glass,
    )


def build_log(path: Path, signer: NoteSigner, n: int = 12, *, rewrite: int | None = None) -> bytes:
    """An ``n``-entry log in batches of 4 (checkpoints at 4, 8, 12, ...); ``rewrite``: entry
    of that index is another one. Returns the latest checkpoint."""
    log = AuditLog.open_sqlite(path, origin=ORIGIN, signer=signer)
    note = b""
    for start in range(0, n, 4):
        batch = [make_entry(i, prompt="a rewritten prompt" if i == rewrite else None)
                 for i in range(start, min(start + 4, n))]
        note = log.append_batch(batch).checkpoint or b""
    log.close()
    return note


def truncate_log(path: Path, keep: int) -> None:
    """What the attacker does: drop the guards, keep the first ``keep`` entries, and delete
    every checkpoint and stored node that covers a later one, so nothing dangles."""
    db = sqlite3.connect(path)
    for t in ("entries", "nodes", "checkpoints"):
        for op in ("update", "delete"):
            db.execute(f"DROP TRIGGER IF EXISTS {t}_append_only_{op}")
    db.execute("DELETE FROM entries WHERE idx >= ?", (keep,))
    db.execute("DELETE FROM checkpoints WHERE size > ?", (keep,))
    # A node id is level * MAX_LOG_SIZE + index (store.node_id); it covers leaves up to
    # (index + 1) * 2**level - 1.
    doomed = [(nid,) for (nid,) in db.execute("SELECT id FROM nodes")
              if (nid % MAX_LOG_SIZE + 1) << (nid // MAX_LOG_SIZE) > keep]
    db.executemany("DELETE FROM nodes WHERE id = ?", doomed)
    db.commit()
    db.close()
