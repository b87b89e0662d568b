"""A streamed answer records itself exactly once, however it ends (issue 9 §2); the slots that
bound inference (issue 9 §6). No server, no model: deltas are scripted."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from medclave.audit import parse_entry
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.enclave.engines.base import ChatMessage, Completion, Delta, SamplingParams, run_streaming
from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.limits import Slots
from medclave.enclave.openai_api import ChunkShaper
from medclave.enclave.streaming import StreamedAnswer, ending_of
from medclave.errors import AuditError, EnclaveError
from medclave.protocol import inference as proto
from tests.e2e.helpers import FakeEngine, Idp, make_idp, start_enclave

Recorded = tuple[str | None, str, int]


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[Recorded] = []
        self.released = 0
        self._fail = fail

    def record(self, answer: str | None, ended: str, tokens: int) -> bytes | None:
        self.records.append((answer, ended, tokens))
        if self._fail:
            raise AuditError("audit.entry_invalid", "disk full")
        return b'{"receipt":1}'

    def release(self) -> None:
        self.released += 1


def _answer(deltas: Iterator[Delta], recorder: Recorder) -> StreamedAnswer:
    return StreamedAnswer("rid", deltas, ChunkShaper(True, "rid", 0, "m", False),
                          recorder.record, release=recorder.release)  # type: ignore[arg-type]


def _words(*words: str, finish: str = "length") -> Iterator[Delta]:
    for word in words:
        yield Delta(word)
    yield Delta("", finish, 3, len(words))


def _events(pieces: Sequence[bytes]) -> list[object]:
    out: list[object] = []
    for piece in pieces:
        for event in piece.split(b"\n\n"):
            if event.startswith(b"data: "):
                data = event[6:]
                out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def test_an_answer_that_ends_is_recorded_once_however_often_it_is_closed() -> None:
    recorder = Recorder()
    answer = _answer(_words("a", " b"), recorder)
    pieces = list(answer)
    assert recorder.records == [("a b", "length", 2)]
    answer.close("client_gone")
    answer.close()
    assert recorder.records == [("a b", "length", 2)] and recorder.released == 1
    assert answer.ended == "length"
    assert _events(pieces)[-1] == "[DONE]"
    assert answer.outcome is not None
    assert [name for name, _ in answer.outcome.trailers] == ["medclave-receipt"]


def test_an_answer_closed_midway_records_what_left_and_closes_the_engine_stream() -> None:
    closed = threading.Event()

    def engine() -> Iterator[Delta]:
        try:
            yield from _words("a", " b", " c")
        finally:
            closed.set()

    recorder = Recorder()
    answer = _answer(engine(), recorder)
    assert b'"role":"assistant"' in next(answer)
    assert b'"content":"a"' in next(answer)
    answer.close("client_gone")
    assert closed.is_set()
    assert recorder.records == [("a", "client_gone", 1)] and recorder.released == 1
    with pytest.raises(StopIteration):
        next(answer)
    answer.close("cancelled")
    assert recorder.records == [("a", "client_gone", 1)]


def test_closing_from_another_thread_wakes_the_reader_and_stops_the_engine() -> None:
    go_on = threading.Event()
    stopped: list[int] = []
    producer_done = threading.Event()

    def produce(emit: Callable[[Delta], bool]) -> None:
        sent = 0
        for word in ("w0", " w1", " w2"):
            if sent == 1:
                go_on.wait(30)  # the engine is slow after its first token
            if not emit(Delta(word)):
                break
            sent += 1
        stopped.append(sent)
        producer_done.set()

    recorder = Recorder()
    answer = _answer(run_streaming(produce), recorder)
    next(answer)  # the role chunk
    assert b"w0" in next(answer)
    reader_done = threading.Event()
    reader_out: list[object] = []

    def reader() -> None:
        reader_out.append(next(answer, None))  # waits for " w1", which does not come
        reader_done.set()

    thread = threading.Thread(target=reader)
    thread.start()
    assert not reader_done.wait(0.2)  # it is waiting inside the engine's stream
    answer.close("client_gone")
    assert reader_done.wait(30)
    thread.join(30)
    assert reader_out == [None]  # nothing more left
    assert recorder.records == [("w0", "client_gone", 1)]
    go_on.set()
    assert producer_done.wait(30)
    assert stopped == [1]  # the next token found the stream closed: not emitted


def test_an_engine_failure_midway_is_recorded_and_reported() -> None:
    def engine() -> Iterator[Delta]:
        yield Delta("partial")
        raise EnclaveError("enclave.engine_failed", "out of memory")

    recorder = Recorder()
    answer = _answer(engine(), recorder)
    events = _events(list(answer))
    assert recorder.records == [("partial", "error", 1)]
    error = events[-1]
    assert isinstance(error, dict) and error["error"]["code"] == "enclave.engine_failed"
    assert answer.outcome is not None
    assert answer.outcome.trailers == (("medclave-error", "enclave.engine_failed"),)


def test_an_engine_that_fails_at_once_commits_no_answer() -> None:
    recorder = Recorder()
    answer = _answer(iter(()), recorder)  # ended without its final delta
    list(answer)
    assert recorder.records == [(None, "error", 0)]
    assert answer.outcome is not None
    assert answer.outcome.trailers == (("medclave-error", "enclave.engine_failed"),)


def test_an_audit_failure_at_the_end_is_reported_not_receipted() -> None:
    recorder = Recorder(fail=True)
    answer = _answer(_words("a", finish="stop"), recorder)
    events = _events(list(answer))
    assert recorder.records == [("a", "stop", 1)]
    assert "[DONE]" not in events
    error = events[-1]
    assert isinstance(error, dict) and error["error"]["code"] == "audit.entry_invalid"
    assert answer.outcome is not None
    assert answer.outcome.trailers == (("medclave-error", "audit.entry_invalid"),)


def test_only_openai_finish_reasons_are_normal_endings() -> None:
    assert [ending_of(r) for r in ("stop", "length", "tool_calls", "content_filter")] == [
        "stop", "length", "tool_calls", "content_filter"]
    assert [ending_of(r) for r in (None, "", "abort", "client_gone", "cancelled")] == [
        "error"] * 5


def test_slots_are_bounded_per_key_and_released_once() -> None:
    slots = Slots(2)
    first, second = slots.take("a"), slots.take("a")
    assert first is not None and second is not None
    assert slots.take("a") is None
    assert slots.take("b") is not None  # another key has slots of its own
    first.release()
    first.release()  # a second release gives nothing back
    assert slots.held("a") == 1
    assert slots.take("a") is not None
    assert slots.take("a") is None


# --- whole answers, through the service ------------------------------------------------------


class _Broken(FakeEngine):
    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        raise EnclaveError("enclave.engine_failed", "context full")


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


def test_a_whole_answer_the_engine_failed_is_recorded_without_an_answer(tmp_path: Path,
                                                                        idp: Idp) -> None:
    enclave = start_enclave(tmp_path / "enclave", idp, engine=_Broken())
    try:
        service = enclave.booted.service
        inner = proto.encode_inner_request(
            "POST", proto.CHAT_PATH, authorization=f"Bearer {idp.token()}",
            body=json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode())
        wire, context = encapsulate_request(service.keys.config, inner)
        answer = bhttp.decode_response(context.decapsulate_response(
            service.handle(wire, proto.OHTTP_REQUEST).body))
        assert answer.status == 500
        sink = service.audit
        assert isinstance(sink, AuditLogSink)
        entry = parse_entry(sink.audit_log.entry(0))
        assert (entry.ended, entry.completion_tokens, entry.answer) == ("error", 0, None)
        assert entry.prompt is not None
    finally:
        enclave.stop()
