"""Replay: rerun a recorded inference and check that it gives the recorded answer.

The hospital holds the tenant key and the prompt; the entry holds the model digest, the engine
build, the sampling parameters with the seed, and commitments to prompt and answer. Replay first
opens the prompt commitment (a changed prompt is refused before anything runs), checks that the
engine is the recorded model on the recorded build (sampling is only reproducible there), runs
it, and opens the answer commitment with what it produced.

The engine is any callable ``(prompt, params) -> answer``: the enclave's llama.cpp engine in
production, a deterministic function in tests. Nothing here imports an engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medclave.audit.entry import AuditEntry, Params, commit, open_commitment
from medclave.errors import AuditError, EnclaveError, MedclaveError

Generate = Callable[[str, Params], str]


@dataclass(frozen=True)
class ReplayEngine:
    """An engine and what it runs: replay refuses one that differs from the entry."""

    generate: Generate
    model_digest: str
    engine_build: str


@dataclass(frozen=True)
class ReplayResult:
    answer: str
    commitment: str


def replay(entry: AuditEntry, prompt: str, engine: ReplayEngine, key: bytes) -> ReplayResult:
    """Raise ``audit.commitment_mismatch`` (prompt), ``audit.replay_engine_mismatch`` or
    ``audit.replay_mismatch`` (answer); return the reproduced answer when all hold."""
    if entry.answer is None or entry.prompt is None or entry.params is None:
        raise AuditError("audit.replay_mismatch", "the entry records no answer to reproduce")
    params = entry.params
    open_commitment(key, "prompt", entry.salt, prompt.encode(), entry.prompt)
    if engine.model_digest != entry.model_digest:
        raise AuditError("audit.replay_engine_mismatch",
                         f"entry used model {entry.model_digest[:16]}…, engine has "
                         f"{engine.model_digest[:16]}…")
    if engine.engine_build != entry.engine_build:
        raise AuditError("audit.replay_engine_mismatch",
                         f"entry used build {entry.engine_build}, engine is {engine.engine_build}")
    try:
        answer = engine.generate(prompt, params)
    except MedclaveError:
        raise
    except Exception as exc:  # an engine failure is not a mismatch; say which it was
        raise EnclaveError("enclave.engine_failed", f"the engine failed: {exc!r}") from exc
    got = commit(key, "answer", entry.salt, answer.encode())
    try:
        open_commitment(key, "answer", entry.salt, answer.encode(), entry.answer)
    except AuditError as exc:
        raise AuditError("audit.replay_mismatch", "the replayed answer differs") from exc
    return ReplayResult(answer, got)
