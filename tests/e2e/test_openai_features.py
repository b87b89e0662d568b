"""Issue 10 §3, §5, §6: what real OpenAI apps send, through the proxy, on the real llama.cpp engine.

The official ``openai`` client against the proxy and the enclave on 127.0.0.1: a tool call round
trip (forced, streamed), ``response_format`` json_object and json_schema, logprobs, ``n``,
``logit_bias``, penalties that change the answer, a prompt longer than the context answered 400
``context_length_exceeded`` (streamed or not, and not retried by the SDK: the engine counts its
calls), and ``models.retrieve``. Before issue 10 every one of these was a 400 "not supported
here", penalties changed nothing, and the long prompt was a 500 the SDK sent three times.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from medclave.background import BackgroundServer
from medclave.client import MedclaveClient
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.engines.base import ChatMessage, Completion, Delta, SamplingParams
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.errors import MedclaveError
from tests.e2e.helpers import Enclave, Idp, llama_engine, sim_policy, start_enclave

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
ASK_WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]
FRANCE: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
CITY = {"type": "object", "properties": {"city": {"type": "string"},
                                         "population": {"type": "integer"}},
        "required": ["city", "population"], "additionalProperties": False}


def _app(proxy: str, idp: Idp, max_retries: int = 0) -> openai.OpenAI:
    """An app with a fresh token: the enclave spends each token's jti (issue 10 §1 is another
    change's), and a retry with the same token would be refused as a replay."""
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=idp.token(), max_retries=max_retries)


def _chat(proxy: str, idp: Idp, **body: Any) -> Any:
    body.setdefault("messages", FRANCE)
    return _app(proxy, idp).chat.completions.create(model=DEFAULT_MODEL_ID, **body)


def _weather_args(arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    assert isinstance(args, dict) and set(args) == {"city"} and isinstance(args["city"], str)
    return args


# --- tools ------------------------------------------------------------------------------------


def test_a_tool_call_round_trip(proxy: str, idp: Idp) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    first = _chat(proxy, idp, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=forced,
                  max_tokens=30, temperature=0, seed=1)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    _weather_args(call.function.arguments)

    # The app runs the tool and sends its result back, with the assistant's call.
    history = [*ASK_WEATHER, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"temperature_c": 18, "sky": "sunny"})}]
    final = _chat(proxy, idp, messages=history, tools=[WEATHER], tool_choice="none",
                  max_tokens=12, temperature=0, seed=1)
    answer = final.choices[0]
    assert answer.message.tool_calls is None and (answer.message.content or "").strip()
    assert answer.finish_reason in ("stop", "length")


def test_a_required_tool_call_streams(proxy: str, idp: Idp) -> None:
    chunks = list(_chat(proxy, idp, messages=ASK_WEATHER, tools=[WEATHER],
                        tool_choice="required", max_tokens=30, temperature=0, seed=1,
                        stream=True))
    calls = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls
             or ()]
    assert calls and calls[0].function is not None and calls[0].function.name == "get_weather"
    assert calls[0].id and all(c.index == 0 and c.id in (None, calls[0].id) for c in calls)
    _weather_args("".join(c.function.arguments or "" for c in calls if c.function))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --- structured output ------------------------------------------------------------------------


def test_json_object_and_json_schema_answers_parse(proxy: str, idp: Idp) -> None:
    ask = [{"role": "user", "content": 'Return JSON: {"city": <capital of France>}'}]
    done = _chat(proxy, idp, messages=ask, response_format={"type": "json_object"},
                 max_tokens=60, temperature=0, seed=1)
    assert done.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(done.choices[0].message.content or ""), dict)

    schema = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY,
                                                     "strict": True}}
    done = _chat(proxy, idp, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                 response_format=schema, max_tokens=60, temperature=0, seed=1)
    value = json.loads(done.choices[0].message.content or "")
    assert set(value) == {"city", "population"}
    assert isinstance(value["city"], str) and type(value["population"]) is int


# --- logprobs, n, logit bias, penalties -----------------------------------------------------


def test_logprobs_with_top_logprobs(proxy: str, idp: Idp) -> None:
    done = _chat(proxy, idp, max_tokens=8, temperature=0, seed=1, logprobs=True,
                 top_logprobs=3)
    choice = done.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert len(entries) == done.usage.completion_tokens
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes or []) == e.token.encode()
        ranked = [t.logprob for t in e.top_logprobs]
        assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)

    streamed = list(_chat(proxy, idp, max_tokens=8, temperature=0, seed=1, logprobs=True,
                          stream=True))
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs
              for e in c.choices[0].logprobs.content or ()]
    assert "".join(tokens) == choice.message.content


def test_n_gives_several_choices_each_reproducible(proxy: str, idp: Idp) -> None:
    both = _chat(proxy, idp, n=2, max_tokens=8, temperature=1.0, seed=40)
    assert [c.index for c in both.choices] == [0, 1]
    assert all((c.message.content or "").strip() for c in both.choices)
    # Choice i samples with seed + i: each is the single answer of that seed.
    for i, choice in enumerate(both.choices):
        alone = _chat(proxy, idp, max_tokens=8, temperature=1.0, seed=40 + i)
        assert alone.choices[0].message.content == choice.message.content
    with pytest.raises(openai.BadRequestError) as streamed:
        _chat(proxy, idp, n=2, max_tokens=8, stream=True)
    assert streamed.value.code == "enclave.bad_request"


def test_logit_bias_and_penalties_change_the_answer(proxy: str, idp: Idp) -> None:
    plain = _chat(proxy, idp, max_tokens=20, temperature=0, seed=1, logprobs=True)
    text = plain.choices[0].message.content or ""
    first = plain.choices[0].logprobs.content[0].token
    [token_id] = llama_engine()._llm.tokenize(first.encode(), add_bos=False, special=False)
    banned = _chat(proxy, idp, max_tokens=20, temperature=0, seed=1,
                   logit_bias={str(token_id): -100})
    assert not (banned.choices[0].message.content or "").startswith(first)

    penalised = _chat(proxy, idp, max_tokens=20, temperature=0, seed=1, presence_penalty=2.0,
                      frequency_penalty=2.0)
    assert penalised.choices[0].message.content != text
    # Same request again: the change is the penalties', not chance.
    assert _chat(proxy, idp, max_tokens=20, temperature=0, seed=1).choices[0].message.content \
        == text


# --- the context, and the models --------------------------------------------------------------


class _Counting:
    """The session's llama.cpp engine, counting the calls that reach it."""

    def __init__(self) -> None:
        self._engine = llama_engine()
        self.name = self._engine.name
        self.build_id = self._engine.build_id
        self.calls = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        self._count()
        return self._engine.chat(messages, params)  # type: ignore[no-any-return]

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        self._count()
        return self._engine.chat_stream(messages, params)  # type: ignore[no-any-return]

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        self._count()
        return self._engine.complete(prompt, params)  # type: ignore[no-any-return]

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        self._count()
        return self._engine.complete_stream(prompt, params)  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


@pytest.fixture
def counted(tmp_path: Path, idp: Idp) -> Iterator[tuple[str, _Counting]]:
    engine = _Counting()
    enclave: Enclave = start_enclave(tmp_path / "counted", idp, engine=engine)
    session = EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))
    server = BackgroundServer(create_proxy_app(session), name="test-proxy").start()
    yield server.url, engine
    server.stop()
    session.close()
    enclave.stop()


def test_a_prompt_longer_than_the_context_is_a_400_the_sdk_does_not_retry(
        counted: tuple[str, _Counting], idp: Idp) -> None:
    proxy, engine = counted
    too_long: list[Any] = [{"role": "user", "content": "word " * 1500}]  # the test engine has 1024 tokens
    for stream in (False, True):
        app = _app(proxy, idp, max_retries=2)
        before = engine.calls
        with pytest.raises(openai.BadRequestError) as caught:
            app.chat.completions.create(model=DEFAULT_MODEL_ID, messages=too_long,
                                        max_tokens=8, stream=stream)
        error = caught.value
        assert error.status_code == 400 and error.code == "context_length_exceeded"
        assert error.param == "messages" and error.type == "invalid_request_error"
        assert "maximum context length is 1024 tokens" in error.message
        assert engine.calls == before + 1  # asked once: a 400 is not retried
    # A prompt that fits, with more max_tokens than the context leaves, is refused the same way.
    with pytest.raises(openai.BadRequestError) as over:
        _chat(proxy, idp, messages=[{"role": "user", "content": "word " * 900}],
              max_tokens=200)
    assert over.value.code == "context_length_exceeded"
    # The engine is unharmed.
    assert (_chat(proxy, idp, max_tokens=4).choices[0].message.content or "").strip()


def test_models_retrieve(proxy: str, idp: Idp) -> None:
    model = _app(proxy, idp).models.retrieve(DEFAULT_MODEL_ID)
    assert (model.id, model.object, model.owned_by) == (DEFAULT_MODEL_ID, "model", "medclave")
    for missing_id in ("gpt-4o", "org/model with space"):
        with pytest.raises(openai.NotFoundError) as missing:
            _app(proxy, idp).models.retrieve(missing_id)
        assert missing.value.code == "model_not_found" and missing.value.param == "model"
        assert repr(missing_id) in missing.value.message
    with pytest.raises(openai.NotFoundError) as chat:
        _app(proxy, idp).chat.completions.create(model="gpt-4o", messages=FRANCE, max_tokens=4)
    assert chat.value.code == "model_not_found"


def test_the_medclave_sdk_reads_models_and_the_context_error(llama_enclave: Enclave,
                                                             idp: Idp) -> None:
    with MedclaveClient(llama_enclave.url, policy=sim_policy(), api_key=idp.token,
                        sim_roots=[llama_enclave.sim_root]) as client:
        assert client.models.retrieve(DEFAULT_MODEL_ID).id == DEFAULT_MODEL_ID
        with pytest.raises(MedclaveError) as missing:
            client.models.retrieve("gpt-4o")
        assert missing.value.code == "enclave.model_not_found"
        with pytest.raises(MedclaveError) as too_long:
            client.chat.completions.create(messages=[{"role": "user", "content": "a " * 1500}],
                                           max_tokens=4)
        assert too_long.value.code == "enclave.context_length_exceeded"
