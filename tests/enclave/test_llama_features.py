"""The llama.cpp engine's OpenAI features on the bundled model (short answers, model loaded once):
streamed and whole answers are the same answer (text, tool calls, log-probabilities), refusals
come before anything is generated, and a closed tool-call stream frees the engine."""

from __future__ import annotations

import json

import pytest

from medclave.enclave.engines import SamplingParams, collect
from medclave.enclave.engines.base import Completion, Delta, ResponseFormat, Tool
from medclave.errors import EnclaveError
from tests.e2e.helpers import llama_engine

ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = Tool("get_weather", "Get the weather in a city",
               '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}')


def _same(whole: Completion, streamed: Completion) -> None:
    assert whole.all_choices == streamed.all_choices
    assert (whole.prompt_tokens, whole.completion_tokens) == (streamed.prompt_tokens,
                                                              streamed.completion_tokens)


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=12, temperature=0.0, seed=2, logprobs=2),
    SamplingParams(max_tokens=24, temperature=0.0, stop=(", la",), logprobs=0),
    SamplingParams(max_tokens=12, temperature=0.9, seed=5, presence_penalty=1.5,
                   logit_bias=((60, -100.0),)),
    SamplingParams(max_tokens=30, temperature=0.0, tools=(WEATHER,), tool_choice="required",
                   tool_name="get_weather"),
    SamplingParams(max_tokens=30, temperature=0.0, tools=(WEATHER,), tool_choice="auto"),
    SamplingParams(max_tokens=40, temperature=0.0, response_format=ResponseFormat(
        "json_schema", '{"type":"object","properties":{"capital":{"type":"string"}},'
                       '"required":["capital"]}')),
])
def test_streamed_and_whole_are_the_same_answer(params: SamplingParams) -> None:
    engine = llama_engine()
    messages = ASK if params.tools else FRANCE
    whole = engine.chat(messages, params)
    _same(whole, collect(engine.chat_stream(messages, params),
                         logprobs=params.logprobs is not None))
    [choice] = whole.all_choices
    if params.logprobs is not None:
        assert choice.logprobs and "".join(e.token for e in choice.logprobs) == choice.text
        assert all(len(e.top) == params.logprobs for e in choice.logprobs)
    if params.stop:
        assert choice.finish_reason == "stop" and ", la" not in choice.text
    if params.logit_bias:
        assert not choice.text.startswith("L")  # token 60 is "L"
    if params.tool_name:
        assert choice.finish_reason == "tool_calls" and choice.text == ""
        [call] = choice.tool_calls
        assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    if params.response_format:
        assert "capital" in json.loads(choice.text)


def test_refusals_come_before_generation() -> None:
    engine = llama_engine()
    long = [{"role": "user", "content": "word " * 1500}]
    cases: list[tuple[object, str, str]] = [
        (lambda: engine.chat_stream(long, SamplingParams(max_tokens=4)),
         "enclave.context_length_exceeded", "messages"),
        (lambda: engine.complete_stream("word " * 1500, SamplingParams(max_tokens=4)),
         "enclave.context_length_exceeded", "prompt"),
        (lambda: engine.chat(FRANCE, SamplingParams(max_tokens=1000, strict_length=True)),
         "enclave.context_length_exceeded", "messages"),
        (lambda: engine.chat_stream(FRANCE, SamplingParams(n=2)), "enclave.bad_request", "n"),
        (lambda: engine.chat(FRANCE, SamplingParams(logit_bias=((10**6, 1.0),))),
         "enclave.bad_request", "logit_bias"),
        (lambda: engine.chat_stream(FRANCE, SamplingParams(response_format=ResponseFormat(
            "json_schema", '{"type":"string","pattern":"(?<=a)b"}'))),
         "enclave.bad_request", "response_format"),
        # What replay hands the engine has not been through the API's checks: checked again.
        (lambda: engine.chat(FRANCE, SamplingParams(response_format=ResponseFormat(
            "json_schema", '{"$ref":"https://schemas.example/s.json"}'))),
         "enclave.bad_request", "response_format"),
        (lambda: engine.chat(FRANCE, SamplingParams(tools=(Tool('a" | [^x]*', "", "{}"),))),
         "enclave.bad_request", "tools"),
    ]
    for call, code, param in cases:
        with pytest.raises(EnclaveError) as caught:
            call()  # type: ignore[operator]
        assert (caught.value.code, caught.value.context.get("param")) == (code, param)
    # A default max_tokens shrinks to what the context leaves instead.
    fits = engine.chat([{"role": "user", "content": "word " * 900}],
                       SamplingParams(max_tokens=500, temperature=0.0))
    assert fits.prompt_tokens + fits.completion_tokens <= 1024


def test_several_choices_sample_with_successive_seeds() -> None:
    engine = llama_engine()
    both = engine.chat(FRANCE, SamplingParams(max_tokens=6, temperature=1.0, seed=9, n=2))
    singles = [engine.chat(FRANCE, SamplingParams(max_tokens=6, temperature=1.0, seed=seed))
               for seed in (9, 10)]
    assert [c.text for c in both.all_choices] == [s.text for s in singles]
    assert both.completion_tokens == sum(s.completion_tokens for s in singles)


def test_a_closed_tool_call_stream_frees_the_engine() -> None:
    engine = llama_engine()
    params = SamplingParams(max_tokens=200, temperature=0.0, tools=(WEATHER,),
                            tool_choice="required")
    stream = engine.chat_stream(ASK, params)
    first = next(stream)
    assert isinstance(first, Delta) and first.tool_call is not None
    stream.close()
    assert engine.complete("Hello", SamplingParams(max_tokens=2, temperature=0.0)).text
