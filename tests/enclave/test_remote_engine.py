"""The OpenAI-compatible engine's boundary: where it may listen (loopback IP or Unix socket
only, no environment proxy), which model it may serve (the measured id; vLLM's ``root`` the
very weights the enclave hashed), what it does when its client leaves, and that what it reads
back is bounded. Stand-in servers on 127.0.0.1 or a Unix socket play vLLM; the real engine
server (llama_cpp.server) is in tests/e2e/test_remote_engine.py."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.background import BackgroundServer
from medclave.enclave.engines.base import (
    Generation,
    GenerationCancelled,
    SamplingParams,
    generation_scope,
)
from medclave.enclave.engines.launch import LaunchedEngine, _argv, model_handle
from medclave.enclave.engines.openai_compat import (
    OpenAICompatEngine,
    _completion,
    _object,
    _sse_events,
    engine_address,
    open_engine,
)
from medclave.enclave.model import model_digest, sha256_folder, verify_model_file
from medclave.errors import EnclaveError, InputError, MedclaveError, ModelError

MESSAGES = [{"role": "user", "content": "Name a bone."}]
PARAMS = SamplingParams(max_tokens=4, temperature=0.0)
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Femur"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1}}


def _vllm(models: list[dict[str, Any]], *, hits: list[str] | None = None,
          slow: threading.Event | None = None, body: bytes | None = None) -> FastAPI:
    """vLLM's endpoints as far as the engine uses them."""
    app = FastAPI()

    @app.get("/v1/models")
    def listed() -> dict[str, Any]:
        return {"object": "list", "data": models}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if hits is not None:
            hits.append((await request.json())["model"])
        if slow is not None:
            while not slow.is_set():
                await asyncio.sleep(0.01)
        if body is not None:
            return Response(body, media_type="application/json")
        return JSONResponse(ANSWER)

    return app


# --- where the engine may listen ---------------------------------------------------------------


@pytest.mark.parametrize(("url", "base"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("http://127.8.9.10:8000/prefix/", "http://127.8.9.10:8000/prefix"),
    ("http://[::1]:8000", "http://[::1]:8000"),
    ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
])
def test_loopback_addresses_are_accepted(url: str, base: str) -> None:
    assert engine_address(url) == (base, None)


def test_a_unix_socket_is_accepted() -> None:
    base, path = engine_address("unix:///run/vllm/engine.sock")
    assert path == "/run/vllm/engine.sock" and base.startswith("http://")


@pytest.mark.parametrize("url", [
    "http://10.0.0.8:8000", "http://192.168.1.4", "http://0.0.0.0:8000", "http://[::]:8000",
    "http://localhost:8000", "http://127.0.0.1.nip.io", "http://engine.internal:8000",
    "http://2130706433:8000", "http://user:pw@127.0.0.1:8000", "http://127.0.0.1@10.0.0.8/",
    "ftp://127.0.0.1", "http://127.0.0.1:8000/?next=http://10.0.0.8", "unix://relative.sock",
    "unix://", "unix:///" + "a" * 200, "", "127.0.0.1:8000", "http://[::ffff:10.0.0.8]:80",
])
def test_anything_else_is_refused_with_a_stable_code(url: str) -> None:
    with pytest.raises(InputError) as caught:
        OpenAICompatEngine(url, model="m", build_id="vllm/1")
    assert caught.value.code == "config.engine_not_local"


@given(st.text(max_size=80) | st.from_regex(r"\Ahttps?://[0-9a-z.:\[\]@]{1,30}(:[0-9]{1,5})?/?\Z"))
@settings(max_examples=300, deadline=None)
def test_engine_address_accepts_only_loopback_ip_literals(url: str) -> None:
    try:
        base, path = engine_address(url)
    except InputError as exc:
        assert exc.code == "config.engine_not_local"
        return
    if path is None:
        assert ipaddress.ip_address(httpx.URL(base).host).is_loopback
    else:
        assert url == "unix://" + path and path.startswith("/")


def test_environment_proxies_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator who sets HTTP_PROXY/ALL_PROXY for the enclave's process does not get the
    engine's traffic (prompts) routed through their proxy."""
    seen: list[str] = []
    proxy = FastAPI()

    @proxy.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        # A proxy is sent absolute URLs ("GET http://127.0.0.1:PORT/v1/models"): record all.
        seen.append(str(request.url))
        return JSONResponse({"error": {"message": "proxied"}}, status_code=502)

    hits: list[str] = []
    with BackgroundServer(proxy) as spy, BackgroundServer(_vllm([{"id": "m"}], hits=hits)) as vllm:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, spy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        # The attack works on a client that trusts the environment (httpx's default) ...
        assert httpx.get(f"{vllm.url}/v1/models").status_code == 502 and seen
        seen.clear()
        # ... and not on the engine's.
        engine = open_engine(vllm.url, model="m", build_id="vllm/1", model_path=None)
        assert engine.chat(MESSAGES, PARAMS).text == "Femur"
        engine.close()
    assert seen == [] and hits == ["m"]


def test_the_engine_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "vllm.sock"
    server = uvicorn.Server(uvicorn.Config(_vllm([{"id": "m"}]), uds=str(path),
                                           log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        engine = open_engine(f"unix://{path}", model="m", build_id="vllm/1", model_path=None)
        assert engine.chat(MESSAGES, PARAMS).text == "Femur"
        engine.close()
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    with pytest.raises(EnclaveError) as gone:
        open_engine(f"unix://{path}", model="m", build_id="vllm/1", model_path=None)
    assert gone.value.code == "enclave.engine_unavailable"


# --- which model it may serve ------------------------------------------------------------------


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"GGUF the measured weights")
    return path


def _check(models: list[dict[str, Any]], model_path: Path | None) -> None:
    with BackgroundServer(_vllm(models)) as vllm:
        engine = OpenAICompatEngine(vllm.url, model="meditron-7b", build_id="vllm/0.11.0")
        try:
            engine.check_served(str(model_path) if model_path else None)
        finally:
            engine.close()


def test_vllm_serving_the_hashed_weights_is_accepted(weights: Path, tmp_path: Path) -> None:
    _check([{"id": "meditron-7b", "root": str(weights)}], weights)
    link = tmp_path / "link.gguf"
    link.symlink_to(weights)
    _check([{"id": "meditron-7b", "root": str(link)}], weights)  # the same file
    _check([{"id": "meditron-7b"}], weights)  # no root (llama_cpp.server): the id alone


@pytest.mark.parametrize("served", [
    [{"id": "llama-3-70b"}],
    [{"id": "meditron-7b"}, {"id": "meditron-7b-lora", "parent": "meditron-7b"}],
    [],
    [{"id": "meditron-7b", "root": "epfl-llm/meditron-7b"}],  # fetched from a hub
    [{"id": "meditron-7b", "root": "OTHER"}],
    [{"id": "meditron-7b", "root": 7}],
])
def test_vllm_serving_anything_else_is_refused(weights: Path, served: list[dict[str, Any]]
                                               ) -> None:
    other = weights.with_name("other.gguf")
    other.write_bytes(b"GGUF the measured weights")  # same bytes, another file: not the hashed one
    served = [{**e, "root": str(other)} if e.get("root") == "OTHER" else e for e in served]
    with pytest.raises(ModelError) as caught:
        _check(served, weights)
    assert caught.value.code == "model.engine_mismatch"


@pytest.mark.parametrize("served", [["junk", {"id": "meditron-7b"}],
                                    [{"id": f"m{i}"} for i in range(65)]])
def test_a_malformed_model_list_is_refused(served: list[Any]) -> None:
    with pytest.raises(EnclaveError) as caught:
        _check(served, None)
    assert caught.value.code == "enclave.engine_failed"


def test_a_root_without_a_hashed_path_is_refused() -> None:
    with pytest.raises(ModelError) as caught:
        _check([{"id": "meditron-7b", "root": "/models/meditron"}], None)
    assert caught.value.code == "model.engine_mismatch"


# Computed with coreutils (the manifest of model.py), not with the code under test:
#   (cd DIR && find -L . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum
FOLDER_KAT = "40df4fc51fce0769e70a4480c9a1e5565e8c955e793aa9c002b0d9ba8baa1ac0"


def test_a_model_folder_digest_is_its_sha256sum_manifest(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_bytes(b"a")
    (tmp_path / "sub" / "c.bin").write_bytes(b"hello\n")
    (tmp_path / "A.json").write_bytes(b"")
    assert sha256_folder(tmp_path) == model_digest(tmp_path) == FOLDER_KAT
    assert verify_model_file(tmp_path, FOLDER_KAT) == FOLDER_KAT
    (tmp_path / "sub" / "c.bin").write_bytes(b"hellO\n")
    with pytest.raises(ModelError) as caught:
        verify_model_file(tmp_path, FOLDER_KAT)
    assert caught.value.code == "model.digest_mismatch"
    weights = tmp_path / "b.txt"
    assert model_digest(weights) == hashlib.sha256(b"a").hexdigest()


# --- a client that leaves, an answer too large ---------------------------------------------------


def test_a_whole_answer_whose_client_left_is_given_up() -> None:
    held = threading.Event()
    with BackgroundServer(_vllm([{"id": "m"}], slow=held)) as vllm:
        engine = OpenAICompatEngine(vllm.url, model="m", build_id="vllm/1")
        generation = Generation("t", "u")
        threading.Timer(0.3, generation.cancel.set).start()
        started = time.monotonic()
        with generation_scope(generation), pytest.raises(GenerationCancelled):
            engine.chat(MESSAGES, PARAMS)
        assert time.monotonic() - started < 10 and generation.stopped
        held.set()  # the server finishes; the next answer is served as usual
        with generation_scope(Generation("t", "u")):
            assert engine.chat(MESSAGES, PARAMS).text == "Femur"
        engine.close()


def test_a_stream_whose_client_left_closes_its_connection_to_the_server() -> None:
    """vLLM aborts a request whose client disconnects: closing the engine's stream must close
    the connection, not read the server's answer to its end."""
    sent: list[int] = []
    ended = threading.Event()
    app = FastAPI()

    @app.get("/v1/models")
    def listed() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "m"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        async def tokens() -> AsyncIterator[bytes]:
            try:
                for i in range(400):
                    sent.append(i)
                    choice = {"index": 0, "delta": {"content": f" w{i}"}}
                    yield f"data: {json.dumps({'choices': [choice]})}\n\n".encode()
                    await asyncio.sleep(0.02)
                yield b"data: [DONE]\n\n"
            finally:
                ended.set()
        return StreamingResponse(tokens(), media_type="text/event-stream")

    with BackgroundServer(app) as vllm:
        engine = open_engine(vllm.url, model="m", build_id="vllm/1", model_path=None)
        stream = engine.chat_stream(MESSAGES, SamplingParams(max_tokens=400))
        assert next(stream).text == " w0"
        stream.close()
        assert ended.wait(20), "the server was never told"
        engine.close()
    assert len(sent) < 400


def test_an_answer_past_the_bound_is_refused() -> None:
    huge = json.dumps({**ANSWER, "pad": "x" * (9 * 1024 * 1024)}).encode()
    with BackgroundServer(_vllm([{"id": "m"}], body=huge)) as vllm:
        engine = OpenAICompatEngine(vllm.url, model="m", build_id="vllm/1")
        with pytest.raises(EnclaveError) as caught:
            engine.chat(MESSAGES, PARAMS)
        engine.close()
    assert caught.value.code == "enclave.engine_failed"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.sampled_from(["choices", "message", "content", "index",
                                                        "usage", "logprobs", "tool_calls",
                                                        "function", "name", "text", "delta"]),
                                       inner, max_size=4), max_leaves=20)


@given(st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=300, deadline=None)
def test_engine_answers_fail_only_as_engine_failures(raw: bytes) -> None:
    """Whatever the server sends, the engine either reads an answer or refuses it as
    ``enclave.engine_failed``; nothing else escapes."""
    try:
        out = _object(raw)
        for chat in (True, False):
            _completion(out, chat=chat)
    except MedclaveError as exc:
        assert exc.code == "enclave.engine_failed"
    lines = raw.decode("utf-8", "replace").splitlines()
    try:
        list(_sse_events(iter(["data: " + line for line in lines])))
    except MedclaveError as exc:
        assert exc.code == "enclave.engine_failed"


def _lines(n: int) -> Iterator[str]:
    yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "x" * n}}]})


def test_an_event_past_the_bound_is_refused() -> None:
    with pytest.raises(EnclaveError) as caught:
        list(_sse_events(_lines(1024 * 1024)))
    assert caught.value.code == "enclave.engine_failed"


# --- the engine the enclave starts (engine_command; served end to end in tests/e2e) ------------


def test_the_weights_travel_by_descriptor_when_there_is_one() -> None:
    assert model_handle("/proc/self/fd/7") == ("/proc/self/fd/7", 7)
    assert model_handle("/models/meditron-7b") == ("/models/meditron-7b", None)
    assert _argv(["serve", "--model={model}", "{port}", "{model_id}", "{other}"],
                 model="/proc/self/fd/7", port=8123, model_id="m") == [
        "serve", "--model=/proc/self/fd/7", "8123", "m", "{other}"]


def test_the_engine_child_gets_no_medclave_settings(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLAVE_ENCLAVE_KBS_URL", "https://kbs.example")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    seen = tmp_path / "env.json"
    dump = f"import json, os; open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))"
    with pytest.raises(EnclaveError) as caught:
        LaunchedEngine([sys.executable, "-c", dump], model_path="/models/m", model="m",
                       build_id="vllm/1", start_seconds=30)
    assert caught.value.code == "enclave.engine_unavailable"  # it exited without serving
    env = json.loads(seen.read_text())
    assert not any(k.startswith("MEDCLAVE_") for k in env) and env["HF_HUB_OFFLINE"] == "1"
