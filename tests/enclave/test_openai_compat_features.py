"""The OpenAI-compatible engine (vLLM) passes issue 10's parameters through and reads back tool
calls, log-probabilities and several choices; a refusal of the server reaches the caller as a
400 before any stream starts (a stand-in server on 127.0.0.1 plays vLLM)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from medclave.background import BackgroundServer
from medclave.enclave.engines import SamplingParams, collect
from medclave.enclave.engines.base import (
    Choice,
    ResponseFormat,
    TokenLogprob,
    Tool,
    ToolCall,
    TopLogprob,
)
from medclave.enclave.engines.openai_compat import OpenAICompatEngine
from medclave.errors import EnclaveError

ASK = [{"role": "user", "content": "Weather in Paris?"},
       {"role": "assistant", "content": "", "tool_calls": [
           {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
       {"role": "tool", "content": "18 C", "tool_call_id": "c1"}]
PARAMS = SamplingParams(
    max_tokens=20, temperature=0.0, seed=4, n=2, presence_penalty=0.5, frequency_penalty=1.0,
    logit_bias=((7, -100.0),), logprobs=1, tool_choice="required", tool_name="get_weather",
    tools=(Tool("get_weather", "Weather", '{"type":"object","required":["city"]}'),),
    response_format=ResponseFormat("json_schema", '{"type":"object"}', "r"))
LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
                         "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]}


def _stand_in(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    def chunks() -> Iterator[bytes]:
        deltas = [{"role": "assistant", "content": "Hi"},
                  {"tool_calls": [{"index": 0, "id": "x", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"ci'}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}]
        for i, delta in enumerate(deltas):
            choice = {"index": 0, "delta": delta, "logprobs": LOGPROBS if i == 0 else None}
            yield f"data: {json.dumps({'choices': [choice]})}\n\n".encode()
        last = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
        yield f"data: {json.dumps({'choices': [last]})}\n\n".encode()
        usage = {"prompt_tokens": 9, "completion_tokens": 4}
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
        yield b"data: [DONE]\n\n"

    @app.get("/version")
    def version() -> dict[str, str]:
        return {"version": "0.11.0"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        seen.append(body)
        if body["messages"][0]["content"] == "too long":
            return JSONResponse({"error": {"message": "This model's maximum context length is "
                                                      "4096 tokens.", "type": "BadRequestError",
                                           "code": 400}}, status_code=400)
        if body.get("stream"):
            return StreamingResponse(chunks(), media_type="text/event-stream")
        call = {"id": "x", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        choices = [{"index": 1, "message": {"role": "assistant", "content": "Hi"},
                    "logprobs": LOGPROBS, "finish_reason": "stop"},
                   {"index": 0, "message": {"role": "assistant", "content": None,
                                            "tool_calls": [call]},
                    "logprobs": None, "finish_reason": "tool_calls"}]
        return JSONResponse({"choices": choices,
                             "usage": {"prompt_tokens": 9, "completion_tokens": 6}})

    return app


def test_parameters_go_through_and_answers_come_back() -> None:
    seen: list[dict[str, Any]] = []
    with BackgroundServer(_stand_in(seen)) as server:
        engine = OpenAICompatEngine(server.url, model="meditron-7b")
        whole = engine.chat(ASK, PARAMS)
        assert seen[-1] == {
            "model": "meditron-7b", "max_tokens": 20, "temperature": 0.0, "top_p": 1.0,
            "seed": 4, "messages": ASK, "n": 2, "presence_penalty": 0.5,
            "frequency_penalty": 1.0, "logit_bias": {"7": -100.0}, "logprobs": True,
            "top_logprobs": 1,
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "required": ["city"]}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "r", "schema": {"type": "object"}, "strict": True}}}
        hi = TokenLogprob("Hi", (72, 105), -0.5, (TopLogprob("Hi", (72, 105), -0.5),))
        assert whole.all_choices == (
            Choice("", "tool_calls", (ToolCall("get_weather", '{"city": "Paris"}'),), None),
            Choice("Hi", "stop", (), (hi,)))
        assert (whole.prompt_tokens, whole.completion_tokens) == (9, 6)

        with pytest.raises(EnclaveError) as several:
            engine.chat_stream(ASK, PARAMS)
        assert several.value.context["param"] == "n"
        streamed = collect(engine.chat_stream(ASK, replace(PARAMS, n=1)), logprobs=True)
        assert streamed.all_choices == (
            Choice("Hi", "tool_calls", (ToolCall("get_weather", '{"city": "Paris"}'),), (hi,)),)
        assert seen[-1]["stream"] is True and "n" not in seen[-1]

        too_long = [{"role": "user", "content": "too long"}]
        for call in (lambda: engine.chat(too_long, PARAMS),
                     lambda: engine.chat_stream(too_long, replace(PARAMS, n=1))):
            with pytest.raises(EnclaveError) as caught:
                call()
            assert caught.value.code == "enclave.context_length_exceeded"
            assert caught.value.context["param"] == "messages"
        engine.close()
