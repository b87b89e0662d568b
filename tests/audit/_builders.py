"""Builders shared by the audit tests: entries, keys and a deterministic engine."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from medclave.audit.entry import (
    AttestationSummary,
    AuditEntry,
    Authorization,
    Params,
    commit,
    format_time,
    pseudonym,
)

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
