"""The embedded default engine: llama.cpp through ``llama-cpp-python``, on the CPU.

llama.cpp's context is not thread-safe, so every generation runs on one worker thread (whole
answers and streams alike, :func:`.base.run_streaming`): the :class:`~.scheduler.FairScheduler`'s,
which takes waiting generations round-robin by tenant and user from a bounded queue (issue 10
§4). One thread also means one OpenMP thread team: calls from ever-new threads would each start
a team of their own, whose idle spinning competes with the one at work. Every generation is
watched token by token (:class:`~.llama_gen.Run`): it is counted, and once its client has left
(its :class:`~.base.Generation` is cancelled) it stops at its next token, whole answers as
streams. What needs no context (rendering the chat
template, tokenizing, checking grammars) runs on the caller's thread first, so a request the
engine cannot serve (a prompt too long for the context, a schema it cannot enforce) is refused
before it waits in line and before a stream starts.

Generation itself is :mod:`.llama_gen`'s (text, stops, log-probabilities, logit bias, tools).

The build identifier names the binding's version and a digest of llama.cpp's system info (the
CPU features its kernels were compiled for and picked): the same weights and seed give the same
greedy answer only on the same build, which is why attestation and audit both record it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any, TypeVar

from medclave.enclave.engines import grammar as gbnf
from medclave.enclave.engines.base import (
    ChatMessage,
    ChoiceBuilder,
    Completion,
    Delta,
    Generation,
    GenerationCancelled,
    SamplingParams,
    current_generation,
    generation_scope,
    one_choice,
    run_streaming,
)
from medclave.enclave.engines.llama_gen import (
    CHOICE_TOKENS,
    Run,
    call_prefix,
    choices_of,
    render_messages,
    tool_deltas,
    tool_of,
)
from medclave.enclave.engines.scheduler import EngineCounters, FairScheduler
from medclave.errors import EnclaveError

ENGINE_NAME = "llama.cpp"
MAX_TOP_LOGPROBS = 20
T = TypeVar("T")


def llama_build_id() -> str:
    """``llama-cpp-python/VERSION@sysinfo-HASH``: the binding and what it was compiled for."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    raw = info if isinstance(info, bytes) else str(info).encode()
    return f"llama-cpp-python/{llama_cpp.__version__}@sysinfo-{hashlib.sha256(raw).hexdigest()[:16]}"


@dataclass
class _Prepared:
    """A request the engine can serve: its prompt, its token budget, its grammars."""

    tokens: list[int]
    max_tokens: int
    template_stops: tuple[str, ...] = ()
    content_grammar: str | None = None
    tool_grammars: dict[str, str] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)  # the model chooses how the answer begins
    forced: str | None = None  # the tool the answer calls


class LlamaCppEngine:
    """``LlamaCppEngine(model_path)``: the path may be ``/proc/self/fd/N`` of an unsealed model."""

    name = ENGINE_NAME

    def __init__(self, model_path: str, *, n_ctx: int = 2048, n_threads: int = 2,
                 seed: int = 0, max_queued: int = 64, retry_after: int = 1) -> None:
        import llama_cpp

        try:
            # Penalties count every generated token, as OpenAI's do (llama.cpp's default
            # window is the last 64).
            self._llm = llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads,
                                        n_threads_batch=n_threads, seed=seed, verbose=False,
                                        last_n_tokens_size=n_ctx)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EnclaveError("enclave.engine_failed", f"llama.cpp cannot load the model: {exc}"
                               ) from exc
        self._worker = FairScheduler(parallel=1, max_queued=max_queued, retry_after=retry_after,
                                     name="medclave-llama")
        self._formatter = _formatter(self._llm)
        self.n_ctx = n_ctx
        self.build_id = llama_build_id()

    # --- the interface -------------------------------------------------------------------------

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        prepared = self._prepare_chat(messages, params)
        return self._run(lambda g: self._whole(prepared, params, g))

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        prepared = self._prepare_text(prompt, params)
        return self._run(lambda g: self._whole(prepared, params, g))

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        one_choice(params)
        return self._stream(self._prepare_chat(messages, params), params)

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        one_choice(params)
        return self._stream(self._prepare_text(prompt, params), params)

    def counters(self) -> EngineCounters:
        """Generations started, finished, cancelled, dropped; tokens; queue depth."""
        return self._worker.counters()

    def close(self) -> None:
        try:
            self._worker.submit(self._llm.close, bounded=False).result()
        except RuntimeError:  # at interpreter exit the worker is gone and nothing else runs
            self._llm.close()
        self._worker.close()

    # --- before generating: on the caller's thread -------------------------------------------

    def _prepare_chat(self, messages: Sequence[ChatMessage], params: SamplingParams
                      ) -> _Prepared:
        rendered = render_messages(messages, params)
        try:
            result = self._formatter(messages=rendered)
        except Exception as exc:  # Jinja raises many types (raise_exception: ValueError)
            raise EnclaveError("enclave.bad_request", "the model's chat template refuses these "
                               f"messages ({type(exc).__name__})", param="messages") from None
        text = result.prompt + (call_prefix(params.tool_name) if params.tool_name else "")
        tokens = self._llm.tokenize(text.encode(), add_bos=not result.added_special,
                                    special=True)
        stop = result.stop or []
        return self._prepare(tokens, params, "messages",
                             tuple([stop] if isinstance(stop, str) else stop))

    def _prepare_text(self, prompt: str, params: SamplingParams) -> _Prepared:
        if params.tools:
            raise EnclaveError("enclave.bad_request", "tools need the chat API", param="tools")
        llm = self._llm
        model = llm._model
        bos, eos = llm.token_bos(), llm.token_eos()
        cls, sep = model.token_cls(), model.token_sep()
        # As create_completion frames a text prompt (llama.py): BOS and EOS as the model asks.
        head = [cls if cls != -1 else bos] if model.add_bos_token() and bos != -1 else []
        tail = [sep if sep != -1 else eos] if model.add_eos_token() or sep != -1 else []
        body = llm.tokenize(prompt.encode(), add_bos=False, special=True) if prompt else []
        if not head and not body:
            raise EnclaveError("enclave.bad_request", "the prompt is empty", param="prompt")
        return self._prepare(head + body + tail, params, "prompt", ())

    def _prepare(self, tokens: list[int], params: SamplingParams, param: str,
                 template_stops: tuple[str, ...]) -> _Prepared:
        n_vocab = self._llm.n_vocab()
        if any(not 0 <= token < n_vocab for token, _ in params.logit_bias):
            raise EnclaveError("enclave.bad_request", f"logit_bias: token ids are below "
                               f"{n_vocab} for this model", param="logit_bias")
        if params.logprobs is not None and not 0 <= params.logprobs <= MAX_TOP_LOGPROBS:
            raise EnclaveError("enclave.bad_request", f"top_logprobs is at most "
                               f"{MAX_TOP_LOGPROBS}", param="top_logprobs")
        prepared = _Prepared(tokens, self._fit(len(tokens), params, param), template_stops)
        if params.response_format is not None:
            fmt = params.response_format
            prepared.content_grammar = (gbnf.json_object_grammar() if fmt.schema is None else
                                        gbnf.schema_grammar(fmt.schema, param="response_format"))
        if any(gbnf.TOOL_NAME.match(t.name) is None for t in params.tools):
            raise EnclaveError("enclave.bad_request", "tools: a function name is 1 to 64 "
                               "letters, digits, _ or -", param="tools")
        if params.calls_tools:
            offered = [t for t in params.tools if params.tool_name in (None, t.name)]
            if not offered:
                raise EnclaveError("enclave.bad_request", "tool_choice names no given tool",
                                   param="tool_choice")
            prepared.tool_grammars = {t.name: gbnf.schema_grammar(t.parameters, param="tools")
                                      for t in offered}
            if params.tool_name is None:
                prepared.choices = choices_of(params)
            else:
                prepared.forced = params.tool_name
        vocab = self._llm._model.vocab
        for text in [prepared.content_grammar, *prepared.tool_grammars.values()]:
            if text is not None:
                gbnf.check_grammar(vocab, text, param="response_format" if text is
                                   prepared.content_grammar else "tools")
        return prepared

    def _fit(self, prompt_tokens: int, params: SamplingParams, param: str) -> int:
        """The completion budget; ``enclave.context_length_exceeded`` (OpenAI's
        ``context_length_exceeded``) when the prompt leaves no room for the caller's."""
        wanted = prompt_tokens + params.max_tokens
        if prompt_tokens >= self.n_ctx or (params.strict_length and wanted > self.n_ctx):
            raise EnclaveError(
                "enclave.context_length_exceeded",
                f"This model's maximum context length is {self.n_ctx} tokens. However, you "
                f"requested {wanted} tokens ({prompt_tokens} in the {param}, "
                f"{params.max_tokens} in the completion). Please reduce the length of the "
                f"{param} or completion.", param=param)
        return min(params.max_tokens, self.n_ctx - prompt_tokens)

    # --- generating: on the worker --------------------------------------------------------------

    def _run(self, call: Callable[[Generation], Completion]) -> Completion:
        """``call`` on the worker in its fair turn; ``GenerationCancelled`` if its client left
        before the turn came."""
        generation = current_generation() or Generation("", "")
        future = self._worker.submit(lambda: self._guard(lambda: call(generation)), generation)
        try:
            return future.result()
        except CancelledError:
            raise GenerationCancelled from None

    def _whole(self, prepared: _Prepared, params: SamplingParams, generation: Generation
               ) -> Completion:
        choices = []
        tokens = 0
        for index in range(params.n):
            built = ChoiceBuilder()
            finish = "stop"
            for delta in self._choice(prepared, params, index, generation):
                built.add(delta)
                if delta.final:
                    finish, tokens = delta.finish_reason or finish, tokens + delta.completion_tokens
            choices.append(built.choice(finish, logprobs=params.logprobs is not None))
        first = choices[0]
        return Completion(first.text, first.finish_reason, len(prepared.tokens), tokens,
                          tuple(choices))

    def _choice(self, prepared: _Prepared, params: SamplingParams, index: int,
                generation: Generation) -> Generator[Delta, None, None]:
        """One choice's deltas; choice ``index`` samples with ``seed + index``."""
        seed = (params.seed + index) % 2**32
        prompt, used, tool = prepared.tokens, 0, prepared.forced
        n_prompt = len(prepared.tokens)
        if prepared.choices:
            pick = Run(self._llm, prompt, min(prepared.max_tokens, CHOICE_TOKENS), params, seed,
                       gbnf.choice_grammar(prepared.choices), greedy=True,
                       generation=generation)
            for _ in pick:
                pass
            used = len(pick.tokens)
            chosen = self._llm.detokenize(pick.tokens).decode("utf-8", errors="replace")
            if pick.finish_reason != "stop" or chosen not in prepared.choices:
                yield Delta("", "length", n_prompt, used)
                return
            prompt = prompt + pick.tokens
            tool = tool_of(chosen, params)
        left = prepared.max_tokens - used
        if tool is not None:
            run = Run(self._llm, prompt, left, params, seed, prepared.tool_grammars[tool],
                      prepared.template_stops, fresh=not prepared.choices,
                      generation=generation)
            yield from tool_deltas(run, tool)
            finish = "tool_calls" if run.finish_reason == "stop" else "length"
            yield Delta("", finish, n_prompt, used + len(run.tokens))
            return
        run = Run(self._llm, prompt, left, params, seed, prepared.content_grammar,
                  params.stop + prepared.template_stops, params.logprobs,
                  fresh=not prepared.choices, generation=generation)
        for text, entries in run:
            yield Delta(text, logprobs=entries)
        yield Delta("", run.finish_reason, n_prompt, used + len(run.tokens))

    def _stream(self, prepared: _Prepared, params: SamplingParams) -> Iterator[Delta]:
        generation = current_generation() or Generation("", "")

        def produce(emit: Callable[[Delta], bool]) -> None:
            deltas = self._choice(prepared, params, 0, generation)
            try:
                for delta in deltas:
                    if not emit(delta):
                        return  # the consumer has gone: closing ``deltas`` stops generation
            except (ValueError, RuntimeError) as exc:
                raise _failed(exc) from exc
            finally:
                deltas.close()
        with generation_scope(generation):
            return run_streaming(produce, submit=lambda run: self._worker.submit(run, generation))

    def _guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except EnclaveError:
            raise
        except (ValueError, RuntimeError) as exc:  # llama-cpp-python's failures
            raise _failed(exc) from exc


def _failed(exc: Exception) -> EnclaveError:
    return EnclaveError("enclave.engine_failed", str(exc)[:200])


def _formatter(llm: Any) -> Any:
    """The model's own chat template (as llama.cpp renders it for ``create_chat_completion``),
    or ChatML for a model that has none."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return llama_chat_format.format_chatml
    eos, bos = llm.token_eos(), llm.token_bos()
    text = llm._model.token_get_text
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=text(eos) if eos != -1 else "",
        bos_token=text(bos) if bos != -1 else "", stop_token_ids=[eos])
