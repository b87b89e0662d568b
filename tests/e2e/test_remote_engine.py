"""The OpenAI-compatible engine through the whole stack: the official openai client -> proxy ->
enclave (sim) -> llama.cpp's own OpenAI-compatible server (``llama_cpp.server``, the stand-in
for vLLM in the same confidential VM) on 127.0.0.1, and back.

The engine is opened by boot from the settings, as in production: the served model is checked
against the measured one, a non-loopback engine is refused at start, an engine that goes away
answers ``enclave.engine_unavailable``, and a hospital policy that requires a GPU refuses this
enclave (it has no GPU evidence) before any prompt leaves the proxy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.engines.launch import LaunchedEngine
from medclave.enclave.model import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHA256, default_model_path
from medclave.errors import EnclaveError, InputError, ModelError
from tests.e2e.engine_server import SERVER_BUILD, LlamaServer, free_port
from tests.e2e.helpers import Enclave, Idp, audit_log, sim_policy, start_enclave, wait_for_entry

MESSAGES: list[Any] = [{"role": "user", "content": "In one short sentence, what is a fracture?"}]


def _ask(app: openai.OpenAI, *, stream: bool = False) -> Any:
    """The same greedy question every time (temperature 0, one seed)."""
    return app.chat.completions.create(model=DEFAULT_MODEL_ID, messages=MESSAGES, max_tokens=10,
                                       temperature=0, seed=11, stream=stream)


def _remote(server_url: str) -> dict[str, object]:
    return {"configured_engine": "openai-compatible", "engine_url": server_url,
            "engine_build": SERVER_BUILD}


@pytest.fixture(scope="module")
def engine_server() -> Iterator[LlamaServer]:
    with LlamaServer() as server:
        yield server


@pytest.fixture(scope="module")
def remote_enclave(folder: Path, idp: Idp, engine_server: LlamaServer) -> Iterator[Enclave]:
    enclave = start_enclave(folder / "remote", idp, **_remote(engine_server.url))
    yield enclave
    enclave.stop()


def _proxy(enclave: Enclave, **policy: object) -> tuple[BackgroundServer, EnclaveSession]:
    base = sim_policy(platforms=("sim", "nvidia") if policy else ("sim",))
    session = EnclaveSession(enclave.url, base.model_copy(update=policy),
                             sim_roots=frozenset({enclave.sim_root}))
    return BackgroundServer(create_proxy_app(session), name="test-proxy").start(), session


def _app(url: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)


def test_openai_client_plain_and_streamed_through_the_remote_engine(
        remote_enclave: Enclave, engine_server: LlamaServer, idp: Idp) -> None:
    # What the engine server answers when asked directly (no Medclave): the reference.
    direct = _ask(_app(engine_server.url, "unused"))
    expected = direct.choices[0].message.content or ""
    assert expected.strip()

    log = audit_log(remote_enclave)
    before = log.size
    server, session = _proxy(remote_enclave)
    try:
        answer = _ask(_app(server.url, idp.token()))
        assert answer.choices[0].message.content == expected
        assert answer.usage is not None
        assert answer.usage.completion_tokens == direct.usage.completion_tokens
        assert answer.usage.prompt_tokens == direct.usage.prompt_tokens

        chunks = list(_ask(_app(server.url, idp.token()), stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == expected
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")

        status = httpx.get(f"{server.url}/medclave/status").json()["enclave"]
        assert status["engine_build"] == SERVER_BUILD
        assert status["model_digest"] == DEFAULT_MODEL_SHA256
    finally:
        server.stop()
        session.close()

    plain, stream = wait_for_entry(remote_enclave, before), wait_for_entry(remote_enclave,
                                                                          before + 1)
    for entry in (plain, stream):
        assert entry.engine_build == SERVER_BUILD
        assert entry.model_digest == DEFAULT_MODEL_SHA256
        assert entry.answer is not None and entry.prompt is not None
        assert entry.ended in ("stop", "length")
    assert plain.completion_tokens == direct.usage.completion_tokens
    assert log.size == before + 2
    assert remote_enclave.booted.service.runtime()["engine"] == "openai-compatible"


def test_a_require_gpu_policy_refuses_the_remote_engine_enclave_without_gpu_evidence(
        remote_enclave: Enclave, idp: Idp) -> None:
    """The enclave on sim has no GPU evidence in its bundle: a hospital that requires a GPU
    (``require_gpu``) refuses it at attestation, and no prompt reaches it. (Real H100 evidence
    bound to a CPU report is covered by tests/attestation/test_gpu_binding.py and
    tests/client/test_verify_gpu.py.)"""
    log = audit_log(remote_enclave)
    before = log.size
    server, session = _proxy(remote_enclave, require_gpu=True)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            _ask(_app(server.url, idp.token()))
        assert caught.value.code == "policy.refused"
        assert httpx.get(f"{server.url}/medclave/status").json()["upstream_verified"] is False
    finally:
        server.stop()
        session.close()
    assert log.size == before  # nothing was asked of the enclave


def test_an_engine_that_goes_away_answers_engine_unavailable(folder: Path, idp: Idp) -> None:
    engine = LlamaServer().start()
    enclave = start_enclave(folder / "gone", idp, **_remote(engine.url))
    server, session = _proxy(enclave)
    try:
        app = _app(server.url, idp.token())
        assert _ask(app).choices[0].message.content
        engine.stop()
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                _ask(app, stream=stream)
            assert (caught.value.status_code, caught.value.code) == (
                503, "enclave.engine_unavailable")
        failed = wait_for_entry(enclave, audit_log(enclave).size - 1)
        assert failed.ended == "error" and failed.answer is None
    finally:
        engine.stop()
        server.stop()
        session.close()
        enclave.stop()


def test_an_engine_that_is_not_there_stops_the_boot(folder: Path, idp: Idp) -> None:
    with pytest.raises(EnclaveError) as caught:
        start_enclave(folder / "none", idp, **_remote(f"http://127.0.0.1:{free_port()}"))
    assert caught.value.code == "enclave.engine_unavailable"


@pytest.mark.parametrize("url", ["http://10.0.0.8:8000", "http://localhost:8000",
                                 "http://127.0.0.1.nip.io:8000", "https://[2001:db8::1]:443",
                                 "http://user@10.0.0.8:8000"])
def test_a_non_loopback_engine_is_refused_at_start(folder: Path, idp: Idp, url: str) -> None:
    with pytest.raises(InputError) as caught:
        start_enclave(folder / "far", idp, configured_engine="openai-compatible",
                      engine_url=url)
    assert caught.value.code == "config.engine_not_local"


def test_an_engine_serving_another_model_is_refused_at_start(
        folder: Path, idp: Idp, engine_server: LlamaServer) -> None:
    """The server serves the bundled model as ``smollm2-135m-instruct``; an enclave measured
    for another model id does not start over it."""
    with pytest.raises(ModelError) as caught:
        start_enclave(folder / "other", idp, model_id="meditron-7b", **_remote(engine_server.url))
    assert caught.value.code == "model.engine_mismatch"


# --- the engine the enclave starts itself (engine_command) -----------------------------------

LLAMA_SERVER = [sys.executable, "-m", "llama_cpp.server", "--model", "{model}", "--model_alias",
                "{model_id}", "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", "1024",
                "--n_threads", "2", "--verbose", "False"]


def test_the_enclave_starts_the_engine_on_the_descriptor_it_hashed(folder: Path,
                                                                    idp: Idp) -> None:
    weights = default_model_path()
    enclave = start_enclave(folder / "launched", idp, configured_engine="openai-compatible",
                            engine_command=LLAMA_SERVER, engine_build=SERVER_BUILD,
                            model_path=weights, model_sha256=DEFAULT_MODEL_SHA256)
    engine = enclave.booted.service.engine
    assert isinstance(engine, LaunchedEngine) and engine.pid is not None
    pid = engine.pid
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        given = argv[argv.index(b"--model") + 1].decode()
        assert given.startswith("/proc/self/fd/")
        # The child holds the very file the enclave hashed, by descriptor, not by a path
        # someone could swap afterwards.
        held = os.readlink(f"/proc/{pid}/fd/{given.rsplit('/', 1)[1]}")
        assert os.path.samefile(held, weights)
        server, session = _proxy(enclave)
        try:
            assert _ask(_app(server.url, idp.token())).choices[0].message.content
        finally:
            server.stop()
            session.close()
        assert wait_for_entry(enclave, 0).model_digest == DEFAULT_MODEL_SHA256
    finally:
        enclave.stop()
    assert not Path(f"/proc/{pid}").exists()  # stopped with the enclave


def test_an_engine_command_that_fails_stops_the_boot(folder: Path, idp: Idp) -> None:
    with pytest.raises(EnclaveError) as caught:
        start_enclave(folder / "failing", idp, configured_engine="openai-compatible",
                      engine_command=[sys.executable, "-c", "raise SystemExit(3)"],
                      engine_build=SERVER_BUILD)
    assert caught.value.code == "enclave.engine_unavailable"
    with pytest.raises(InputError) as both:
        start_enclave(folder / "both", idp, configured_engine="openai-compatible",
                      engine_command=LLAMA_SERVER, engine_url="http://127.0.0.1:8000")
    assert both.value.code == "config.invalid"
