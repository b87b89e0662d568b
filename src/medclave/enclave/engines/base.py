"""What every inference engine offers the enclave: chat and text completion, whole or streamed.

The enclave speaks the OpenAI API to its clients; engines speak this smaller interface, so the
embedded llama.cpp engine and a vLLM server in the same confidential VM look the same to the
request handling, the audit record and the attestation (which reports ``name`` and
``build_id``: greedy output differs between builds, so a replay needs the very build).

A stream yields :class:`Delta` pieces of text (or of a tool call's arguments), then exactly one
final delta with the ``finish_reason`` and the token counts. An engine refuses what it cannot
do with ``enclave.bad_request`` (and a prompt that does not fit its context with
``enclave.context_length_exceeded``) when it is called, before a stream starts, never by
ignoring a parameter.

Who a generation is for, and whether it is still wanted (issue 10 §4), travels beside the call
rather than in it: the enclave runs each engine call inside :func:`generation_scope` with a
:class:`Generation` (tenant, user, a :class:`Cancel`), and an engine that schedules or stops
generations reads :func:`current_generation` on the calling thread. Engines that do neither
(a vLLM server schedules itself) ignore it, and their signatures stay the OpenAI-shaped ones.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from medclave.errors import EnclaveError, MedclaveError

# A message as the engine receives it: ``role`` and ``content`` (text), and for a tool call
# round trip an assistant's ``tool_calls`` (OpenAI's shape) or a tool's ``tool_call_id``.
ChatMessage = Mapping[str, Any]


@dataclass(frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON Schema as compact JSON text,
    in the caller's key order (the order shapes the grammar, hence the arguments' order)."""

    name: str
    description: str = ""
    parameters: str = '{"type":"object","properties":{}}'


@dataclass(frozen=True)
class ResponseFormat:
    """``json_object`` (any JSON object) or ``json_schema`` (``schema``, compact JSON text)."""

    type: Literal["json_object", "json_schema"]
    schema: str | None = None
    name: str = ""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    # True: ``max_tokens`` was the caller's, and a prompt that leaves less room is refused;
    # False (a default): it shrinks to what the context leaves after the prompt.
    strict_length: bool = False
    n: int = 1  # choices; choice i samples with seed + i
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    tools: tuple[Tool, ...] = ()
    tool_choice: Literal["none", "auto", "required"] = "auto"
    tool_name: str | None = None  # this tool must be called (``tool_choice`` then "required")
    response_format: ResponseFormat | None = None

    @property
    def calls_tools(self) -> bool:
        """Whether the model is offered the tools (it may or must call one)."""
        return bool(self.tools) and self.tool_choice != "none"


@dataclass(frozen=True)
class TopLogprob:
    token: str
    bytes: tuple[int, ...]
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token, its log-probability, and the most likely alternatives at its step."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as generated


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class Completion:
    """A whole answer: the first choice's text and finish reason, and every choice (``n``);
    the token counts are for all choices together."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    choices: tuple[Choice, ...] = ()

    @property
    def all_choices(self) -> tuple[Choice, ...]:
        return self.choices or (Choice(self.text, self.finish_reason),)


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call ``index``: its ``name`` on the first piece, then arguments."""

    index: int
    arguments: str
    name: str | None = None


@dataclass(frozen=True)
class Delta:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_call: ToolCallDelta | None = None
    logprobs: tuple[TokenLogprob, ...] = ()

    @property
    def final(self) -> bool:
        return self.finish_reason is not None

    @property
    def produced(self) -> bool:
        """Whether this delta carries generated output (a token, or more)."""
        return bool(self.text) or self.tool_call is not None


@runtime_checkable
class Engine(Protocol):
    """An inference engine. Implementations must be safe to call from several threads."""

    name: str
    build_id: str

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion: ...

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]: ...

    def complete(self, prompt: str, params: SamplingParams) -> Completion: ...

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]: ...

    def close(self) -> None: ...


@dataclass
class ChoiceBuilder:
    """One choice put together from its deltas (a stream collected, or what left of it)."""

    parts: list[str] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)  # [name, arguments] per call index
    logprobs: list[TokenLogprob] = field(default_factory=list)
    produced: bool = False

    def add(self, delta: Delta) -> None:
        self.produced = self.produced or delta.produced
        self.parts.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        call = delta.tool_call
        if call is not None:
            while len(self.calls) <= call.index:
                self.calls.append(["", ""])
            if call.name:
                self.calls[call.index][0] = call.name
            self.calls[call.index][1] += call.arguments

    def choice(self, finish_reason: str, *, logprobs: bool = False) -> Choice:
        return Choice("".join(self.parts), finish_reason,
                      tuple(ToolCall(name, args) for name, args in self.calls),
                      tuple(self.logprobs) if logprobs else None)


def one_choice(params: SamplingParams) -> None:
    """A stream carries one choice (:class:`Delta` has no choice index): refuse ``n`` > 1."""
    if params.n != 1:
        raise EnclaveError("enclave.bad_request", "n > 1 is not streamed here; ask without "
                           "stream", param="n")


def collect(stream: Iterator[Delta], *, logprobs: bool = False) -> Completion:
    """A whole completion from a stream (for engines that only stream)."""
    built = ChoiceBuilder()
    for delta in stream:
        built.add(delta)
        if delta.final:
            choice = built.choice(delta.finish_reason or "stop", logprobs=logprobs)
            return Completion(choice.text, choice.finish_reason, delta.prompt_tokens,
                              delta.completion_tokens, (choice,))
    raise EnclaveError("enclave.engine_failed", "the engine stream ended without a final delta")


class Cancel:
    """A one-way "no longer wanted" signal, set from any thread (the client left).

    Callbacks registered with :meth:`on_set` run once, on the thread that sets it (or at once,
    if it is already set): a scheduler drops a queued generation, a waiting caller wakes.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class GenerationCancelled(Exception):
    """A whole answer's generation was dropped before it started: its client had left."""


@dataclass
class Generation:
    """One generation: who it is for (the fair scheduler's key), its :class:`Cancel`, and what
    the engine reports back: how many tokens it generated and whether it stopped early because
    it was cancelled (``stopped``; a generation that finished before its client left did not)."""

    tenant: str
    user: str
    cancel: Cancel = field(default_factory=Cancel)
    tokens: int = 0
    stopped: bool = False

    def token(self) -> bool:
        """Count one generated token; False once the generation is no longer wanted (the
        engine stops there, and the generation is marked as stopped early)."""
        self.tokens += 1
        return self.wanted()

    def wanted(self) -> bool:
        if self.cancel.is_set():
            self.stopped = True
            return False
        return True


_CURRENT: contextvars.ContextVar[Generation | None] = contextvars.ContextVar(
    "medclave_generation", default=None)


@contextlib.contextmanager
def generation_scope(generation: Generation) -> Iterator[Generation]:
    """Engine calls made inside are for ``generation`` (read on the calling thread)."""
    token = _CURRENT.set(generation)
    try:
        yield generation
    finally:
        _CURRENT.reset(token)


def current_generation() -> Generation | None:
    return _CURRENT.get()


_END = object()


class DeltaStream(Iterator[Delta]):
    """What :func:`run_streaming` returns: the deltas as the producer emits them.

    :meth:`close` may be called from any thread at any time, also while another thread waits in
    ``next``: the enclave closes a stream whose client has gone from the event loop's side while
    a worker thread waits for the next token. The waiting ``next`` then ends the iteration, and
    the producer stops at its next token (``emit`` returns False).
    """

    def __init__(self, items: queue.Queue[object], gone: Cancel) -> None:
        self._items = items
        self._gone = gone
        self._over = False  # the producer's end was read: nothing to cancel any more

    def __next__(self) -> Delta:
        if self._gone.is_set() or self._over:
            raise StopIteration
        item = self._items.get()
        if item is _END or self._gone.is_set():
            self._over = item is _END
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self._over = True
            if isinstance(item, MedclaveError):
                raise item
            raise EnclaveError("enclave.engine_failed", repr(item)) from item
        assert isinstance(item, Delta)
        if item.final:
            self._over = True
        return item

    def close(self) -> None:
        if not self._over:
            self._gone.set()  # the producer stops at its next token, or never starts
        self._items.put(_END)  # wakes a ``next`` waiting on another thread

    def __del__(self) -> None:
        # Dropped without close (a consumer that stopped reading): the producer still stops.
        if not self._over:
            self._gone.set()


def run_streaming(produce: Callable[[Callable[[Delta], bool]], None], *,
                  submit: Callable[[Callable[[], None]], object] | None = None
                  ) -> DeltaStream:
    """Run ``produce(emit)`` on another thread and hand back what it emits.

    ``submit`` hands the producer to the engine's own worker (llama.cpp: its one thread); by
    default it gets a thread of its own. Either way the generation never runs on the
    consumer's thread, so an abandoned or slow consumer holds nothing; ``emit`` returns False
    once the stream is closed, and the producer stops at its next token. A producer still
    queued behind other work when its stream is closed does not start at all.

    Inside :func:`generation_scope`, closing the stream sets the generation's :class:`Cancel`
    (a scheduler then drops it if it is still queued), and a delta refused because the stream
    was closed marks the generation as stopped early.
    """
    items: queue.Queue[object] = queue.Queue()
    generation = current_generation()
    gone = generation.cancel if generation is not None else Cancel()

    def emit(delta: Delta) -> bool:
        if gone.is_set():
            if generation is not None:
                generation.stopped = True
            return False
        items.put(delta)
        return True

    def run() -> None:
        try:
            if not gone.is_set():
                produce(emit)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)
        finally:
            items.put(_END)

    if submit is None:
        threading.Thread(target=run, name="medclave-engine-stream", daemon=True).start()
    else:
        submit(run)
    return DeltaStream(items, gone)
