"""The engine ``medclave audit replay`` runs: the enclave's llama.cpp engine, as a
:class:`~medclave.audit.replay.ReplayEngine`.

Replay must run what the enclave ran: the prompt given is the committed model input
(:func:`~medclave.enclave.commitment.commitment_input`: the chat messages or the completion
prompt, with the stop sequences, tools, response format and the other parameters that shape the
answer), handed to the same engine call the enclave made (``chat`` or ``complete``) with the
recorded sampling parameters and seed; what it returns is the committed form of the answer
(:func:`~medclave.enclave.commitment.committed_answer`). The model file's digest is
checked before loading, and the build is this machine's llama.cpp build: greedy output is only
reproducible on the build the entry names, so :func:`medclave.audit.replay.replay` refuses any
other (``audit.replay_engine_mismatch``).
"""

from __future__ import annotations

import atexit
from dataclasses import replace
from functools import cache
from pathlib import Path

from medclave.audit.entry import Params
from medclave.audit.replay import ReplayEngine
from medclave.enclave.commitment import committed_answer, parse_commitment_input
from medclave.enclave.engines.base import Engine
from medclave.enclave.model import DEFAULT_MODEL_SHA256, default_model_path, verify_model_file
from medclave.errors import InputError


def replay_engine_for(engine: Engine, model_digest: str) -> ReplayEngine:
    """``engine`` (already loaded with the model whose SHA-256 is ``model_digest``) for replay."""

    def generate(prompt: str, params: Params) -> str:
        value, committed = parse_commitment_input(prompt.encode())
        # strict_length stays off: an answer that was given fitted the context, and a default
        # max_tokens shrinks here exactly as it did then.
        sampling = replace(committed, max_tokens=params.max_tokens,
                           temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        run = engine.complete if isinstance(value, str) else engine.chat
        done = run(value, sampling)  # type: ignore[arg-type]
        return committed_answer(sampling, done.all_choices)

    return ReplayEngine(generate=generate, model_digest=model_digest,
                        engine_build=engine.build_id)


def llama_replay_engine(model_path: Path | None = None, model_sha256: str | None = None, *,
                        n_ctx: int = 2048, n_threads: int = 2) -> ReplayEngine:
    """llama.cpp over ``model_path`` (checked against ``model_sha256``), or over the bundled
    model (checked against its pin)."""
    return _replay_llama(model_path, model_sha256, n_ctx=n_ctx, n_threads=n_threads)[1]


def _replay_llama(model_path: Path | None, model_sha256: str | None, *, n_ctx: int,
                  n_threads: int) -> tuple[Engine, ReplayEngine]:
    from medclave.enclave.engines.llamacpp import LlamaCppEngine

    if model_path is None:
        path, digest = default_model_path(check=True), DEFAULT_MODEL_SHA256
    elif model_sha256 is None:
        raise InputError("input.missing", "give the model's SHA-256 with its path")
    else:
        path, digest = model_path, verify_model_file(model_path, model_sha256)
    engine = LlamaCppEngine(str(path), n_ctx=n_ctx, n_threads=n_threads)
    return engine, replay_engine_for(engine, digest)


@cache
def replay_engine() -> ReplayEngine:
    """The default of ``medclave audit replay``: the bundled model on llama.cpp, loaded once
    per process (and released at exit, before the interpreter tears its modules down)."""
    engine, replayer = _replay_llama(None, None, n_ctx=2048, n_threads=2)
    atexit.register(engine.close)
    return replayer
