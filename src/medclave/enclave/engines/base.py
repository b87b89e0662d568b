"""What every inference engine offers the enclave: chat and text completion, whole or streamed.

The enclave speaks the OpenAI API to its clients; engines speak this smaller interface, so the
embedded llama.cpp engine and a vLLM server in the same confidential VM look the same to the
request handling, the audit record and the attestation (which reports ``name`` and
``build_id``: greedy output differs between builds, so a replay needs the very build).

A stream yields :class:`Delta` pieces of text, then exactly one final delta with the
``finish_reason`` and the token counts.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from medclave.errors import EnclaveError, MedclaveError

ChatMessage = Mapping[str, str]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Delta:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


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


def collect(stream: Iterator[Delta]) -> Completion:
    """A whole completion from a stream (for engines that only stream)."""
    parts: list[str] = []
    for delta in stream:
        parts.append(delta.text)
        if delta.final:
            return Completion("".join(parts), delta.finish_reason or "stop",
                              delta.prompt_tokens, delta.completion_tokens)
    raise EnclaveError("enclave.engine_failed", "the engine stream ended without a final delta")


_END = object()


class DeltaStream(Iterator[Delta]):
    """What :func:`run_streaming` returns: the deltas as the producer emits them.

    :meth:`close` may be called from any thread at any time, also while another thread waits in
    ``next``: the enclave closes a stream whose client has gone from the event loop's side while
    a worker thread waits for the next token. The waiting ``next`` then ends the iteration, and
    the producer stops at its next token (``emit`` returns False).
    """

    def __init__(self, items: queue.Queue[object], gone: threading.Event) -> None:
        self._items = items
        self._gone = gone

    def __next__(self) -> Delta:
        if self._gone.is_set():
            raise StopIteration
        item = self._items.get()
        if item is _END or self._gone.is_set():
            self.close()
            raise StopIteration
        if isinstance(item, MedclaveError):
            self.close()
            raise item
        if isinstance(item, BaseException):
            self.close()
            raise EnclaveError("enclave.engine_failed", repr(item)) from item
        assert isinstance(item, Delta)
        return item

    def close(self) -> None:
        self._gone.set()
        self._items.put(_END)  # wakes a ``next`` waiting on another thread

    def __del__(self) -> None:
        # Dropped without close (a consumer that stopped reading): the producer still stops.
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
    """
    items: queue.Queue[object] = queue.Queue()
    gone = threading.Event()

    def emit(delta: Delta) -> bool:
        if gone.is_set():
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
