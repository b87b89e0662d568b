"""A streamed answer and its audit record: appended exactly once, however the stream ends.

Issue 9 §2: a client that read 39 of 40 streamed words and left got an answer no entry recorded,
because the entry was written only when the stream was exhausted. Here the record is the
answer's own business. :class:`StreamedAnswer` appends it when the engine's final delta arrives
(``stop``, ``length``, ...), when the engine fails (``error``), or when it is closed before the
end (``client_gone``, ``cancelled``), with the text and the number of completion tokens that had
left by then, whichever comes first, and only that once. Closing it also closes the engine's
delta iterator, so the engine stops at its next token.

:class:`AnswerStream` is what the router sends: the encapsulated pieces of the response, and
:meth:`AnswerStream.close` with how it ended, which the router calls however the response ends.
Both may be closed from any thread while another waits for the next piece: the router closes a
stream whose client has gone from the event loop while a worker thread waits for a token.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Protocol

from medclave.audit.entry import Ending
from medclave.enclave.engines.base import Choice, ChoiceBuilder, Delta
from medclave.errors import EnclaveError, MedclaveError
from medclave.protocol import inference as proto

log = logging.getLogger("medclave.enclave")

# (answer text or None, how it ended, completion tokens that left) -> the receipt, if any
Record = Callable[[str | None, Ending, int], bytes | None]

class Shaper(Protocol):
    """The events of one streamed answer in an API's shape: chat and completion chunks
    (:class:`~medclave.enclave.openai_api.ChunkShaper`), Responses events
    (:class:`~medclave.enclave.responses.EventShaper`)."""

    def first(self) -> bytes:
        """What leaves before the engine's first delta (may be empty)."""
        ...

    def delta(self, d: Delta) -> bytes: ...

    def error(self, code: str, message: str) -> bytes:
        """The stream failed (the engine, or the audit record at its end)."""
        ...

    def done(self) -> bytes:
        """After the final delta, once the answer is recorded (may be empty)."""
        ...


# OpenAI's finish reasons, the endings an engine reports itself.
_FINISH_REASONS: dict[str, Ending] = {"stop": "stop", "length": "length",
                                      "tool_calls": "tool_calls",
                                      "content_filter": "content_filter"}


def ending_of(finish_reason: str | None) -> Ending:
    """An engine's finish reason as an entry's ``ended``. A reason outside OpenAI's vocabulary
    is recorded as ``error``: the log never claims a normal ending it cannot vouch for."""
    return _FINISH_REASONS.get(finish_reason or "", "error")


def _text(choice: Choice) -> str:
    return choice.text


@dataclass(frozen=True)
class StreamOutcome:
    """How a streamed answer ended, once it has: the record's receipt, or the code of the error
    the client was told (generation failed, or the audit log refused the record)."""

    ended: Ending
    receipt: bytes | None = None
    error: str | None = None

    @property
    def trailers(self) -> tuple[tuple[str, str], ...]:
        """The trailer section of the Binary HTTP message: the receipt, or the error code."""
        if self.error is not None:
            return (("medclave-error", self.error),)
        if self.receipt is not None:
            return ((proto.RECEIPT_HEADER, proto.encode_receipt_header(self.receipt)),)
        return ()


class StreamedAnswer(Iterator[bytes]):
    """The server-sent events of one streamed answer (one consumer thread at a time).

    ``release`` is called once the answer is recorded (it frees the tenant's slot); ``commit``
    turns what left (text, tool calls) into the text the record commits to. What the stream
    ends with is :attr:`outcome`, set once when the answer ends and never changed after.
    """

    def __init__(self, rid: str, deltas: Iterator[Delta], shaper: Shaper, record: Record,
                 *, release: Callable[[], None] = lambda: None,
                 commit: Callable[[Choice], str] = _text) -> None:
        self._rid = rid
        self._deltas = deltas
        self._shaper = shaper
        self._record = record
        self._release = release
        self._commit = commit
        self._lock = threading.Lock()
        self._left = ChoiceBuilder()  # what has left, as one choice
        self._tokens = 0
        self._ended: Ending | None = None  # set once, under the lock, by whoever records
        self._closing: Ending | None = None  # closed early, and how: nothing more leaves
        self._pending: deque[bytes] = deque()
        first = shaper.first()
        if first:
            self._pending.append(first)
        self._receipt: bytes | None = None
        self._audit_failure: MedclaveError | None = None
        self._reported: str | None = None  # the error code the client was told

    @property
    def ended(self) -> Ending | None:
        return self._ended

    @property
    def outcome(self) -> StreamOutcome | None:
        """How the answer ended (None until it has): what its trailer section carries."""
        if self._ended is None:
            return None
        return StreamOutcome(self._ended, self._receipt, self._reported)

    @property
    def completion_tokens(self) -> int:
        return self._tokens

    @property
    def closed(self) -> bool:
        """Closed before its end: nothing more leaves, not even the end of the message."""
        return self._closing is not None

    # --- the consumer's side ------------------------------------------------------------------

    def __next__(self) -> bytes:
        while not self._pending:
            if self._closing is not None or self._ended is not None:
                self._close_deltas()
                raise StopIteration
            self._step()
        if self._closing is not None:
            raise StopIteration
        return self._pending.popleft()

    def _step(self) -> None:
        try:
            delta = next(self._deltas)
        except StopIteration:
            self._fail(EnclaveError("enclave.engine_failed",
                                    "the engine stream ended without a final delta"))
            return
        except MedclaveError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # the type only: an engine's message may carry content
            log.error("request %s engine failed: %s", self._rid, type(exc).__name__)
            self._fail(EnclaveError("enclave.engine_failed"))
            return
        with self._lock:
            if self._ended is not None or self._closing is not None:
                return  # closed meanwhile: this token does not leave
            if delta.produced:
                self._left.add(delta)
                self._tokens += 1
        piece = self._shaper.delta(delta)
        # Never an empty piece: a zero-length chunk is how chunked OHTTP and indeterminate-length
        # BHTTP content mark their end.
        if piece:
            self._pending.append(piece)
        if not delta.final:
            return
        # The engine's own count for a whole answer (a delta may carry several tokens).
        if not self._finish(ending_of(delta.finish_reason), delta.completion_tokens):
            return
        if self._audit_failure is not None:
            self._report(self._audit_failure)
            return
        done = self._shaper.done()
        if done:
            self._pending.append(done)

    def _fail(self, exc: MedclaveError) -> None:
        if self._closing is not None or not self._finish("error", None):
            return  # closed early (the closer records it): nobody is reading
        log.error("request %s stream failed: %s", self._rid, exc.code)
        self._report(exc)

    def _report(self, exc: MedclaveError) -> None:
        self._pending.append(self._shaper.error(exc.code, exc.public_message))
        self._reported = exc.code

    # --- recording, once ------------------------------------------------------------------------

    def _finish(self, ending: Ending, tokens: int | None) -> bool:
        """Record how the answer ended; False if it had already ended (nothing done)."""
        with self._lock:
            if self._ended is not None:
                return False
            self._ended = ending
            count = self._tokens if tokens is None else tokens
            # An answer of which nothing was generated before it failed has nothing to commit.
            answer = None if ending == "error" and not self._left.produced else \
                self._commit(self._left.choice(ending))
        try:
            self._receipt = self._record(answer, ending, count)
        except MedclaveError as exc:
            self._audit_failure = exc
        except Exception as exc:  # fail closed, and say so without content
            log.error("request %s audit failed: %s", self._rid, type(exc).__name__)
            self._audit_failure = EnclaveError("internal", "the audit log refused the record")
        finally:
            self._release()
        return True

    def close(self, ending: Ending = "cancelled") -> None:
        """Stop here: nothing more leaves, the engine stops at its next token, and what left is
        recorded with ``ending`` unless the answer had already ended. Any thread, any time,
        idempotent."""
        with self._lock:
            if self._closing is None and self._ended is None:
                self._closing = ending
        self._close_deltas()
        self._finish(ending, None)

    def _close_deltas(self) -> None:
        close = getattr(self._deltas, "close", None)
        if close is None:
            return
        # A plain generator running on another thread cannot be closed from this one (ValueError);
        # that thread's next step sees the answer closed and closes it.
        with contextlib.suppress(ValueError):
            close()


class AnswerStream(Iterator[bytes]):
    """The encapsulated pieces of a chunked response, and how to stop them."""

    def __init__(self, pieces: Generator[bytes, None, None],
                 answer: StreamedAnswer | None = None) -> None:
        self._pieces = pieces
        self.answer = answer

    def __next__(self) -> bytes:
        return next(self._pieces)

    def close(self, ending: Ending = "cancelled") -> None:
        """The response is over, with ``ending`` if the answer had not ended by itself. Any
        thread, idempotent; a no-op for the record once the answer has ended."""
        if self.answer is not None:
            self.answer.close(ending)
        # Running on another thread (ValueError): its next step finds the answer closed.
        with contextlib.suppress(ValueError):
            self._pieces.close()
