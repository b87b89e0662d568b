"""The embedded default engine: llama.cpp through ``llama-cpp-python``, on the CPU.

llama.cpp's context is not thread-safe, so every call runs on one worker thread (whole answers
and streams alike, :func:`.base.run_streaming`): the :class:`~.scheduler.FairScheduler`'s, which
takes waiting generations round-robin by tenant and user from a bounded queue. One thread also
means one OpenMP thread team: calls from ever-new threads would each start a team of their own,
whose idle spinning competes with the one at work.

Every generation is watched token by token (a logits processor, which llama.cpp calls once per
sampled token): it counts the tokens, and once the generation's client has left it forces the
end-of-generation token, so a whole answer stops at its next token as a stream does. (A grammar
that forbids the end token, as a JSON schema does mid-object, could overrule that; the
generation then runs to its limit.)

The build identifier names the binding's version and a digest of llama.cpp's system info (the
CPU features its kernels were compiled for and picked): the same weights and seed give the same
greedy answer only on the same build, which is why attestation and audit both record it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

from medclave.enclave.engines.base import (
    ChatMessage,
    Completion,
    Delta,
    Generation,
    GenerationCancelled,
    SamplingParams,
    current_generation,
    generation_scope,
    run_streaming,
)
from medclave.enclave.engines.scheduler import EngineCounters, FairScheduler
from medclave.errors import EnclaveError

ENGINE_NAME = "llama.cpp"


def llama_build_id() -> str:
    """``llama-cpp-python/VERSION@sysinfo-HASH``: the binding and what it was compiled for."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    raw = info if isinstance(info, bytes) else str(info).encode()
    return f"llama-cpp-python/{llama_cpp.__version__}@sysinfo-{hashlib.sha256(raw).hexdigest()[:16]}"


class LlamaCppEngine:
    """``LlamaCppEngine(model_path)``: the path may be ``/proc/self/fd/N`` of an unsealed model."""

    name = ENGINE_NAME

    def __init__(self, model_path: str, *, n_ctx: int = 2048, n_threads: int = 2,
                 seed: int = 0, max_queued: int = 64, retry_after: int = 1) -> None:
        import llama_cpp

        try:
            self._llm = llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads,
                                        n_threads_batch=n_threads, seed=seed, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EnclaveError("enclave.engine_failed", f"llama.cpp cannot load the model: {exc}"
                               ) from exc
        self._worker = FairScheduler(parallel=1, max_queued=max_queued, retry_after=retry_after,
                                     name="medclave-llama")
        self._eos = int(self._llm.token_eos())
        self.n_ctx = n_ctx
        self.build_id = llama_build_id()

    # --- whole answers -------------------------------------------------------------------------

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        plain: Any = [dict(m) for m in messages]
        out = self._run(lambda g: self._llm.create_chat_completion(
            messages=plain, stream=False, **self._kwargs(params, g)))
        return _completion(out, text_of=lambda c: c["message"].get("content") or "")

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        out = self._run(lambda g: self._llm.create_completion(
            prompt=prompt, stream=False, **self._kwargs(params, g)))
        return _completion(out, text_of=lambda c: c.get("text") or "")

    def _run(self, call: Callable[[Generation], Any]) -> Any:
        """``call`` on the worker, in its fair turn; ``GenerationCancelled`` if its client left
        before the turn came."""
        generation = current_generation() or Generation("", "")
        future = self._worker.submit(lambda: self._guard(lambda: call(generation)), generation)
        try:
            return future.result()
        except CancelledError:
            raise GenerationCancelled from None

    # --- streams -------------------------------------------------------------------------------

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        plain: Any = [dict(m) for m in messages]
        return self._stream(
            lambda g: self._llm.create_chat_completion(messages=plain, stream=True,
                                                       **self._kwargs(params, g)),
            lambda choice: choice.get("delta", {}).get("content") or "")

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        return self._stream(
            lambda g: self._llm.create_completion(prompt=prompt, stream=True,
                                                  **self._kwargs(params, g)),
            lambda choice: choice.get("text") or "")

    def _stream(self, start: Callable[[Generation], Any],
                text_of: Callable[[dict[str, Any]], str]) -> Iterator[Delta]:
        generation = current_generation() or Generation("", "")

        def produce(emit: Callable[[Delta], bool]) -> None:
            finish = "stop"
            count = 0
            for chunk in self._guard(lambda: start(generation)):
                choice = chunk["choices"][0]
                text = text_of(choice)
                if text:
                    count += 1
                    if not emit(Delta(text)):
                        return
                finish = choice.get("finish_reason") or finish
            # n_tokens is what the context evaluated: the prompt plus all but the last token.
            prompt_tokens = max(0, int(self._llm.n_tokens) - max(0, count - 1))
            emit(Delta("", finish, prompt_tokens, count))
        with generation_scope(generation):
            return run_streaming(produce, submit=lambda run: self._worker.submit(run, generation))

    def _kwargs(self, params: SamplingParams, generation: Generation) -> dict[str, Any]:
        import llama_cpp
        import numpy as np

        eos = self._eos

        def watch(input_ids: Any, scores: Any) -> Any:
            # Called once per sampled token, on the worker. Once the client has left, only the
            # end-of-generation token may follow.
            if generation.token():
                return scores
            forced = np.full_like(scores, -np.inf)
            forced[eos] = 0.0
            return forced

        return {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stop": list(params.stop),
            "logits_processor": llama_cpp.LogitsProcessorList([watch]),
        }

    def counters(self) -> EngineCounters:
        """Generations started, finished, cancelled, dropped; tokens; queue depth."""
        return self._worker.counters()

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except EnclaveError:
            raise
        except (ValueError, RuntimeError) as exc:  # llama-cpp-python's failures (context full)
            raise EnclaveError("enclave.engine_failed", str(exc)[:200]) from exc

    def close(self) -> None:
        try:
            self._worker.submit(self._llm.close, bounded=False).result()
        except RuntimeError:  # at interpreter exit the worker is gone and nothing else runs
            self._llm.close()
        self._worker.close()


def _completion(out: Any, *, text_of: Callable[[dict[str, Any]], str]) -> Completion:
    choice = out["choices"][0]
    usage = out.get("usage") or {}
    return Completion(text=text_of(choice), finish_reason=choice.get("finish_reason") or "stop",
                      prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      completion_tokens=int(usage.get("completion_tokens", 0)))
