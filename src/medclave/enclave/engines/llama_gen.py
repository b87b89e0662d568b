"""Generation on llama.cpp, token by token: text, stops, log-probabilities, logit bias, tools.

``llama-cpp-python``'s own completion call cannot serve the OpenAI API whole: log-probabilities
need every logit kept for the context (``logits_all``, n_ctx x n_vocab floats: 4 GiB for an
8k-context 128k-vocabulary model), ``logit_bias`` is dropped when another logits processor is
given (``LogitsProcessorList.extend`` returns None), tool calls come only through chat handlers
that lose the seed or the tool results, and a prompt too long for the context fails while
generating. So :class:`Run` drives :meth:`llama_cpp.Llama.generate` itself, with the sampler
chain ``create_completion`` builds (top-k 40, min-p 0.05, typical 1.0, then the caller's
temperature, top-p, penalties and seed), and reads each step's logits through a logits
processor (the first sampler of the chain, so it sees the model's raw logits).

Every answer evaluates its prompt from an empty context. ``generate`` would otherwise reuse the
longest prefix the context still holds from the previous request, another caller's perhaps:
how long an answer takes to start would then tell whether someone else's prompt began the same
way (a known KV-cache timing side channel between tenants), and the logits, computed in other
batches, would differ in their last bits from a cold run's, so a near tie could make an answer
``medclave audit replay`` (a cold run) does not reproduce. Within one answer the second stage of
a tool call continues the first.

Tools follow llama.cpp's ``chatml-function-calling`` handler, in the model's own chat template:
the functions are described in the system message; the answer starts either ``message:`` or
``functions.<name>:`` followed by the arguments, which a grammar built from the function's JSON
Schema constrains. A named ``tool_choice`` prefills ``functions.<name>:``; ``required`` lets
the model choose among the functions only, ``auto`` among them and ``message:`` (that choice is
greedy, as in llama.cpp). One call per answer.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from medclave.enclave.engines.base import (
    ChatMessage,
    Delta,
    Generation,
    SamplingParams,
    TokenLogprob,
    Tool,
    ToolCallDelta,
    TopLogprob,
)

MESSAGE = "message:\n"
CHOICE_TOKENS = 64  # the longest "functions.<name>:" a choice may take


def call_prefix(name: str) -> str:
    return f"functions.{name}:\n"


class Logits:
    """A logits processor: each step's log-probabilities (before any bias), then the bias."""

    def __init__(self, bias: Sequence[tuple[int, float]], want_logprobs: bool) -> None:
        self._ids = np.array([i for i, _ in bias], dtype=np.intc)
        self._bias = np.array([b for _, b in bias], dtype=np.float32)
        self._want = want_logprobs
        self.step: npt.NDArray[np.float64] | None = None

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
                 ) -> npt.NDArray[np.single]:
        if self._want:
            x = np.asarray(scores, dtype=np.float64)
            top = x.max()
            self.step = x - (top + np.log(np.exp(x - top).sum()))
        if len(self._ids):
            scores = np.array(scores, dtype=np.float32)
            scores[self._ids] += self._bias
        return scores


@dataclass
class Run:
    """One generation from ``prompt``: pieces of text as they become safe to send.

    A piece is held back while it could be the start of a stop sequence or of a UTF-8
    character, so the pieces add up to the whole answer, streamed or not. ``finish_reason`` and
    ``tokens`` are set once the iteration ends (or is closed: generation stops at once).
    Each token is counted on ``generation``, and once that is cancelled (its client left) the
    run ends there, at its next token.
    """

    llm: Any
    prompt: list[int]
    max_tokens: int
    params: SamplingParams
    seed: int
    grammar: str | None = None
    stops: tuple[str, ...] = ()
    logprobs: int | None = None
    greedy: bool = False
    generation: Generation | None = None
    fresh: bool = True  # evaluate the prompt anew (False: it continues the last run)
    finish_reason: str = "length"
    tokens: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[str, tuple[TokenLogprob, ...]]]:
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        llm, p = self.llm, self.params
        bias = () if self.greedy else p.logit_bias
        logits = Logits(bias, self.logprobs is not None) \
            if bias or self.logprobs is not None else None
        llm.set_seed(self.seed)  # read by the sampler chain ``generate`` builds
        if self.fresh:
            llm.reset()  # no prefix of an earlier request's context is reused (see the module)
        gen = llm.generate(
            self.prompt, top_k=40, top_p=p.top_p, min_p=0.05, typical_p=1.0,
            temp=0.0 if self.greedy else p.temperature, repeat_penalty=1.0,
            frequency_penalty=0.0 if self.greedy else p.frequency_penalty,
            presence_penalty=0.0 if self.greedy else p.presence_penalty,
            logits_processor=llama_cpp.LogitsProcessorList([logits]) if logits else None,
            grammar=LlamaGrammar.from_string(self.grammar, verbose=False)
            if self.grammar else None)
        stops = [s.encode() for s in self.stops]
        text = bytearray()
        ends: list[int] = []  # where each token's bytes end in ``text``
        entries: list[TokenLogprob] = []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sent = given = 0
        end: int | None = None
        try:
            if self.max_tokens <= 0:
                return
            for token in gen:
                if self.generation is not None and not self.generation.token():
                    break
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    self.finish_reason = "stop"
                    break
                self.tokens.append(token)
                before = len(text)
                text += llm.detokenize([token])
                ends.append(len(text))
                if logits is not None and logits.step is not None and self.logprobs is not None:
                    entries.append(_entry(llm, logits.step, token, bytes(text[before:]),
                                          self.logprobs))
                end = _first_stop(text, stops, before)
                if end is not None:
                    self.finish_reason = "stop"
                    break
                if len(self.tokens) >= self.max_tokens:
                    break
                safe = len(text) - _held(text, stops, sent)
                if safe > sent:
                    piece = decoder.decode(bytes(text[sent:safe]))
                    first = given
                    while given < len(ends) and ends[given] <= safe:
                        given += 1
                    sent = safe
                    if piece or given > first:
                        yield piece, tuple(entries[first:given])
        finally:
            gen.close()
        end = len(text) if end is None else end
        piece = decoder.decode(bytes(text[sent:end]), final=True)
        rest = [e for i, e in enumerate(entries[given:], given) if (ends[i - 1] if i else 0) < end]
        if piece or rest:
            yield piece, tuple(rest)


def _first_stop(text: bytearray, stops: Sequence[bytes], before: int) -> int | None:
    """Where the first stop sequence starts, looking only where the last token could end one."""
    found = [i for s in stops if (i := text.find(s, max(0, before - len(s) + 1))) >= 0]
    return min(found) if found else None


def _held(text: bytearray, stops: Sequence[bytes], sent: int) -> int:
    """How many bytes at the end of ``text`` could begin a stop sequence."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text) - sent), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def _entry(llm: Any, step: npt.NDArray[np.float64], token: int, piece: bytes, top: int
           ) -> TokenLogprob:
    alternatives: tuple[TopLogprob, ...] = ()
    if top:
        best = np.argpartition(-step, top)[:top]
        best = best[np.argsort(-step[best], kind="stable")]
        alternatives = tuple(_top(llm.detokenize([int(i)]), float(step[i])) for i in best)
    return TokenLogprob(piece.decode("utf-8", errors="replace"), tuple(piece),
                        float(step[token]), alternatives)


def _top(piece: bytes, logprob: float) -> TopLogprob:
    return TopLogprob(piece.decode("utf-8", errors="replace"), tuple(piece), logprob)


# --- tools -------------------------------------------------------------------------------------


def render_messages(messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> list[dict[str, str]]:
    """The messages as text for the model's chat template: an assistant's tool calls written as
    it would have written them, the offered functions described in the system message."""
    out: list[dict[str, str]] = []
    for message in messages:
        content = str(message.get("content") or "")
        calls = message.get("tool_calls") or ()
        if message["role"] == "assistant" and (calls or params.calls_tools):
            lines = [MESSAGE + content] if content and params.calls_tools else \
                [content] if content else []
            lines += [call_prefix(c["function"]["name"]) + c["function"]["arguments"]
                      for c in calls]
            content = "\n".join(lines)
        out.append({"role": str(message["role"]), "content": content})
    if params.calls_tools:
        described = describe(params.tools, params)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{described}"}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def describe(tools: Sequence[Tool], params: SamplingParams) -> str:
    """The functions and the answer format, as llama.cpp's chatml-function-calling words it."""
    offered = [t for t in tools if params.tool_name in (None, t.name)]
    lines = ["You have access to the following functions:", ""]
    for tool in offered:
        head = f"functions.{tool.name}:" + (f" {tool.description}" if tool.description else "")
        lines += [head, tool.parameters, ""]
    if params.tool_choice == "auto" and params.tool_name is None:
        lines += ["You can respond to users messages with either a single message or a "
                  "function call.", "",
                  "To respond with a message begin the message with 'message:', use the "
                  "following format:", "", "message:", "<message>", ""]
    lines += ["To call a function begin the message with 'functions.<function_name>:', use "
              "the following format:", "", "functions.<function_name>:",
              '{ "arg1": "value1", "arg2": "value2" }']
    return "\n".join(lines)


def choices_of(params: SamplingParams) -> list[str]:
    """What the answer may begin with when the model chooses (``auto``, ``required``)."""
    calls = [call_prefix(t.name) for t in params.tools]
    return [MESSAGE, *calls] if params.tool_choice == "auto" else calls


def tool_deltas(run: Run, name: str) -> Iterator[Delta]:
    """A tool call's deltas: its name with the first piece of arguments, then the rest."""
    first = True
    for text, _ in run:
        if text or first:
            yield Delta("", tool_call=ToolCallDelta(0, text, name if first else None))
            first = False
    if first:
        yield Delta("", tool_call=ToolCallDelta(0, "", name))


def tool_of(chosen: str, params: SamplingParams) -> str | None:
    """The tool a choice names (None: a message)."""
    return next((t.name for t in params.tools if call_prefix(t.name) == chosen), None)
