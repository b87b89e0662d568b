"""Issue 9 §2: every streamed answer is recorded, whole or in part, however it ends.

The attack: an authenticated client read 39 of 40 streamed words, disconnected, and no entry was
appended (the entry was written only when the stream was exhausted). Here the client leaves
after a few words, through the SDK and through the proxy with the official ``openai`` package,
on real uvicorn servers, with a paced engine (the test releases each token, so the entry must
appear while the engine still holds the rest) and with llama.cpp. The log is polled with a
bounded wait; the entry must say the client left and how many tokens had left the enclave, and
its answer commitment must open with exactly those words.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from medclave.audit import AuditEntry, open_commitment, parse_commitment_key
from medclave.client import MedclaveClient
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.enclave.server import BackgroundServer
from tests.e2e.helpers import (
    Enclave,
    Idp,
    SlowEngine,
    audit_log,
    llama_engine,
    sim_policy,
    start_enclave,
    wait_for_entry,
)

MESSAGES = [{"role": "user", "content": "List forty words."}]
COUNT = "Count from 1 to 500, separated by commas: 1, 2, 3,"
COUNT_CHAT = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
LLAMA_MAX_TOKENS = 512  # far more than the test reads: the client leaves long before


def tenant_key(enclave: Enclave) -> bytes:
    path = enclave.settings.commitment_key_file
    assert path is not None
    return parse_commitment_key(path.read_bytes())


@pytest.fixture
def slow(tmp_path: Path, idp: Idp) -> Iterator[tuple[Enclave, SlowEngine]]:
    engine = SlowEngine(words=40)
    enclave = start_enclave(tmp_path / "slow", idp, engine=engine)
    yield enclave, engine
    engine.release(100)  # let a producer a failing test left waiting finish
    enclave.stop()


def proxy_to(enclave: Enclave) -> tuple[BackgroundServer, EnclaveSession]:
    """The hospital's proxy straight to the enclave (the recording relay buffers whole answers,
    so it would read the stream to its end whatever the client does)."""
    session = EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))
    return BackgroundServer(create_proxy_app(session), name="test-proxy").start(), session


def _check_left_after(enclave: Enclave, engine: SlowEngine, entry: AuditEntry, words: int) -> None:
    assert entry.authorization.decision == "allow"
    assert (entry.ended, entry.completion_tokens) == ("client_gone", words)
    assert entry.answer is not None
    # Exactly the words that left, under the tenant's key.
    open_commitment(tenant_key(enclave), "answer", entry.salt,
                    " ".join(engine.words[:words]).encode(), entry.answer)
    # The engine stops at its next token: releasing every remaining one emits none of them.
    engine.release(len(engine.words))
    assert engine.stopped.wait(60)
    assert engine.emitted == [words]
    assert audit_log(enclave).size == 1  # recorded once, not again when the producer ended


# --- the paced engine -----------------------------------------------------------------------


def test_sdk_client_leaving_mid_stream_is_recorded(slow: tuple[Enclave, SlowEngine],
                                                    idp: Idp) -> None:
    enclave, engine = slow
    with MedclaveClient(enclave.url, policy=sim_policy(), api_key=idp.token,
                        sim_roots=[enclave.sim_root]) as client:
        engine.release(3)
        chunks = client.chat.completions.create(messages=MESSAGES, stream=True, max_tokens=64)
        read = list(itertools.islice(chunks, 4))  # the role chunk, then three words
        assert [c.choices[0].delta.content for c in read] == ["", "w0", " w1", " w2"]
        chunks.close()  # the app stops reading: the SDK closes the connection
        # No further token is released, so the stream cannot end: the entry must come from
        # the disconnect.
        entry = wait_for_entry(enclave, 0)
    _check_left_after(enclave, engine, entry, 3)


def test_openai_client_leaving_a_proxied_stream_is_recorded(slow: tuple[Enclave, SlowEngine],
                                                            idp: Idp) -> None:
    enclave, engine = slow
    server, session = proxy_to(enclave)
    try:
        app = openai.OpenAI(base_url=f"{server.url}/v1", api_key=idp.token(), max_retries=0)
        engine.release(5)
        stream = app.chat.completions.create(model=DEFAULT_MODEL_ID, messages=MESSAGES,
                                             max_tokens=64, stream=True)
        read = list(itertools.islice(stream, 6))
        assert [c.choices[0].delta.content for c in read][1:] == ["w0", " w1", " w2", " w3",
                                                                  " w4"]
        stream.close()
        entry = wait_for_entry(enclave, 0)
    finally:
        server.stop()
        session.close()
    _check_left_after(enclave, engine, entry, 5)


def test_a_finished_stream_is_recorded_once_with_its_ending(slow: tuple[Enclave, SlowEngine],
                                                            idp: Idp) -> None:
    enclave, engine = slow
    engine.release(40)
    with MedclaveClient(enclave.url, policy=sim_policy(), api_key=idp.token,
                        sim_roots=[enclave.sim_root]) as client:
        chunks = list(client.chat.completions.create(messages=MESSAGES, stream=True,
                                                     max_tokens=64))
        receipt = client.last_receipt
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == engine.answer
    entry = wait_for_entry(enclave, 0)
    assert (entry.ended, entry.completion_tokens) == ("stop", 40)
    assert receipt is not None and receipt.entry == entry
    assert entry.answer is not None
    open_commitment(tenant_key(enclave), "answer", entry.salt, engine.answer.encode(),
                    entry.answer)
    assert engine.stopped.wait(60)
    assert audit_log(enclave).size == 1


def test_a_whole_answer_records_its_ending_and_tokens(tmp_path: Path, idp: Idp) -> None:
    engine = SlowEngine(words=12)
    engine.opened.set()
    enclave = start_enclave(tmp_path / "whole", idp, engine=engine)
    try:
        with MedclaveClient(enclave.url, policy=sim_policy(), api_key=idp.token,
                            sim_roots=[enclave.sim_root]) as client:
            client.chat.completions.create(messages=MESSAGES, max_tokens=64)
        entry = wait_for_entry(enclave, 0)
        assert (entry.ended, entry.completion_tokens) == ("stop", 12)
    finally:
        enclave.stop()


# --- llama.cpp ------------------------------------------------------------------------------


def _generated(prompt_tokens: int) -> int:
    """Tokens llama.cpp generated for its last request: what its context holds beyond the
    prompt (``n_tokens`` is the prompt plus all but the last generated token). Asked on the
    engine's one worker thread, so it waits for a generation in progress to stop."""
    engine = llama_engine()
    held = engine._worker.submit(lambda: int(engine._llm.n_tokens)).result(timeout=300)
    return int(held) - prompt_tokens + 1


def _check_llama_left(entry: AuditEntry, read: int, prompt_tokens: int) -> None:
    assert entry.ended == "client_gone"
    assert entry.completion_tokens is not None
    assert read <= entry.completion_tokens < LLAMA_MAX_TOKENS
    # llama.cpp stopped within a few tokens of the last one that left, far short of the limit
    # (the few: those generated while the enclave learnt that its client had gone).
    assert _generated(prompt_tokens) <= entry.completion_tokens + 32 < LLAMA_MAX_TOKENS


def test_sdk_client_leaving_a_llama_stream_is_recorded(llama_enclave: Enclave, idp: Idp) -> None:
    before = audit_log(llama_enclave).size
    with MedclaveClient(llama_enclave.url, policy=sim_policy(), api_key=idp.token,
                        sim_roots=[llama_enclave.sim_root]) as client:
        usage = client.chat.completions.create(messages=COUNT_CHAT, max_tokens=1).usage
        assert usage is not None
        chunks = client.chat.completions.create(messages=COUNT_CHAT, stream=True, temperature=0,
                                                seed=1, max_tokens=LLAMA_MAX_TOKENS)
        assert len(list(itertools.islice(chunks, 4))) == 4  # the role chunk and three tokens
        chunks.close()
        entry = wait_for_entry(llama_enclave, before + 1, timeout=120)
    _check_llama_left(entry, 3, usage.prompt_tokens)


def test_openai_client_leaving_a_proxied_llama_stream_is_recorded(llama_enclave: Enclave,
                                                                  idp: Idp) -> None:
    before = audit_log(llama_enclave).size
    server, session = proxy_to(llama_enclave)
    try:
        usage = openai.OpenAI(base_url=f"{server.url}/v1", api_key=idp.token(), max_retries=0
                              ).completions.create(model=DEFAULT_MODEL_ID, prompt=COUNT,
                                                   max_tokens=1).usage
        assert usage is not None
        app = openai.OpenAI(base_url=f"{server.url}/v1", api_key=idp.token(), max_retries=0)
        stream = app.completions.create(model=DEFAULT_MODEL_ID, prompt=COUNT, stream=True,
                                        temperature=0, seed=1, max_tokens=LLAMA_MAX_TOKENS)
        assert len(list(itertools.islice(stream, 4))) == 4
        stream.close()
        entry = wait_for_entry(llama_enclave, before + 1, timeout=120)
    finally:
        server.stop()
        session.close()
    _check_llama_left(entry, 4, usage.prompt_tokens)


def test_the_receipt_of_a_finished_llama_stream_states_its_ending(llama_enclave: Enclave,
                                                                  idp: Idp) -> None:
    before = audit_log(llama_enclave).size
    with MedclaveClient(llama_enclave.url, policy=sim_policy(), api_key=idp.token,
                        sim_roots=[llama_enclave.sim_root]) as client:
        chunks = list(client.chat.completions.create(messages=COUNT_CHAT, stream=True,
                                                     temperature=0, seed=1, max_tokens=6))
        receipt = client.last_receipt
    entry = wait_for_entry(llama_enclave, before)
    assert (entry.ended, entry.completion_tokens) == ("length", 6)
    assert receipt is not None and receipt.entry == entry  # the client's proof says so too
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
