"""Issue 10 §3, §5, §6 inside the encapsulation, with a spy engine (no model): what an OpenAI
request's tools, response format, logprobs, ``n``, logit bias and penalties become for the
engine and for the audit commitment; what is refused, with OpenAI's error object and the field
at fault; a prompt the engine cannot fit refused before its stream starts; the models routes."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.audit import open_commitment, parse_commitment_key, parse_entry
from medclave.client.session import EnclaveSession
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.enclave.commitment import commitment_input, parse_commitment_input
from medclave.enclave.engines.base import (
    ChatMessage,
    Choice,
    Completion,
    Delta,
    ResponseFormat,
    SamplingParams,
    Tool,
    ToolCall,
    ToolCallDelta,
)
from medclave.enclave.engines.grammar import check_schema
from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.errors import EnclaveError, MedclaveError
from medclave.protocol import inference as proto
from tests.e2e.helpers import Enclave, FakeEngine, Idp, make_idp, sim_policy, start_enclave

ASK = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER_SCHEMA = {"type": "object", "required": ["city"],
                  "properties": {"city": {"type": "string"}}}  # keys deliberately unsorted
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                            "parameters": WEATHER_SCHEMA}}
CALL = ToolCall("get_weather", '{"city": "Paris"}')


class Spy(FakeEngine):
    """Answers a call to ``get_weather`` and records what the engine was given."""

    def __init__(self, *, refuse: EnclaveError | None = None) -> None:
        super().__init__()
        self.given: list[tuple[Any, SamplingParams]] = []
        self._refuse = refuse

    def _take(self, value: Any, params: SamplingParams) -> None:
        self.given.append((value, params))
        if self._refuse is not None:
            raise self._refuse

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        self._take(list(messages), params)
        choices = tuple(Choice("", "tool_calls", (CALL,)) for _ in range(params.n))
        return Completion("", "tool_calls", 11, 5 * params.n, choices)

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        self._take(list(messages), params)  # raises here, before any delta, like llama.cpp

        def deltas() -> Iterator[Delta]:
            yield Delta("", tool_call=ToolCallDelta(0, '{"city":', "get_weather"))
            yield Delta("", tool_call=ToolCallDelta(0, ' "Paris"}'))
            yield Delta("", "tool_calls", 11, 2)
        return deltas()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def enclave(tmp_path: Path, idp: Idp, spy: Spy) -> Iterator[Enclave]:
    e = start_enclave(tmp_path / "enclave", idp, engine=spy)
    yield e
    e.stop()


def _call(enclave: Enclave, body: dict[str, Any] | None, token: str, *,
          path: str = proto.CHAT_PATH, method: str = "POST") -> bhttp.Response:
    raw = b"" if body is None else json.dumps(body).encode()
    inner = proto.encode_inner_request(method, path, body=raw, authorization=f"Bearer {token}")
    service = enclave.booted.service
    wire, context = encapsulate_request(service.keys.config, inner)
    return bhttp.decode_response(context.decapsulate_response(
        service.handle(wire, proto.OHTTP_REQUEST).body))


def _error(answer: bhttp.Response) -> dict[str, Any]:
    body = json.loads(answer.content)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def _entry_answer_opens(enclave: Enclave, index: int, answer: str, prompt: bytes) -> None:
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    entry = parse_entry(sink.audit_log.entry(index))
    key_file = enclave.settings.commitment_key_file
    assert key_file is not None and entry.prompt is not None and entry.answer is not None
    key = parse_commitment_key(key_file.read_bytes())
    open_commitment(key, "prompt", entry.salt, prompt, entry.prompt)
    open_commitment(key, "answer", entry.salt, answer.encode(), entry.answer)


def test_every_parameter_reaches_the_engine_and_the_commitment(enclave: Enclave, idp: Idp,
                                                               spy: Spy) -> None:
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]
    answer = _call(enclave, {
        "messages": history, "tools": [WEATHER], "n": 2, "seed": 7, "max_tokens": 30,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "logprobs": True, "top_logprobs": 3, "logit_bias": {"15": -100, "7": 2.5},
        "presence_penalty": 0.5, "frequency_penalty": -1, "stop": ["END"],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "r", "schema": {"type": "object"}}},
        "parallel_tool_calls": False, "user": "u-1"}, idp.token())
    assert answer.status == 200, answer.content
    [(messages, params)] = spy.given
    assert messages == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
        {"role": "tool", "content": "18 C", "tool_call_id": "c1"}]
    assert params == SamplingParams(
        max_tokens=30, temperature=1.0, top_p=1.0, seed=7, stop=("END",), strict_length=True,
        n=2, presence_penalty=0.5, frequency_penalty=-1.0, logit_bias=((7, 2.5), (15, -100.0)),
        logprobs=3, tool_choice="required", tool_name="get_weather",
        tools=(Tool("get_weather", "Weather", '{"type":"object","required":["city"],'
                                              '"properties":{"city":{"type":"string"}}}'),),
        response_format=ResponseFormat("json_schema", '{"type":"object"}', "r"))

    body = json.loads(answer.content)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    rid = answer.header(proto.REQUEST_ID_HEADER)
    assert body["choices"][1]["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{rid}_1_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    # The commitment covers all of it, the answer every choice and its calls.
    choice = {"content": "", "tool_calls": [{"arguments": '{"city": "Paris"}',
                                             "name": "get_weather"}]}
    committed = json.dumps({"choices": [choice, choice]}, separators=(",", ":"))
    _entry_answer_opens(enclave, 0, committed, commitment_input(messages, params))


def test_a_streamed_tool_call_is_shaped_and_committed(enclave: Enclave, idp: Idp) -> None:
    body = {"messages": ASK, "tools": [WEATHER], "tool_choice": "required", "stream": True,
            "seed": 3, "stream_options": {"include_usage": True}}
    with EnclaveSession(enclave.url, sim_policy(),
                        sim_roots=frozenset({enclave.sim_root})) as session:
        stream = session.stream("POST", proto.CHAT_PATH, body=json.dumps(body).encode(),
                                authorization=f"Bearer {idp.token()}")
        events = b"".join(stream.iter_content()).decode().split("\n\n")
    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    rid = chunks[0]["id"].removeprefix("chatcmpl-")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[1] == {"tool_calls": [{"index": 0, "id": f"call_{rid}_0_0", "type": "function",
                                         "function": {"name": "get_weather",
                                                      "arguments": '{"city":'}}]}
    assert deltas[2] == {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 2,
                                   "total_tokens": 13}
    committed = json.dumps({"choices": [{"content": "", "tool_calls": [
        {"arguments": '{"city": "Paris"}', "name": "get_weather"}]}]}, separators=(",", ":"))
    params = SamplingParams(seed=3, tools=(Tool("get_weather", "Weather", json.dumps(
        WEATHER_SCHEMA, separators=(",", ":"))),), tool_choice="required")
    _entry_answer_opens(enclave, 0, committed, commitment_input(ASK, params))


@pytest.mark.parametrize(("body", "param"), [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "two words"}}]}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"n": 2, "stream": True}, "n"),
    ({"n": 9}, "n"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 500}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "r"}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "r", "schema": {"$ref": "https://schemas.example/evil.json"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "r", "schema": {"type": "array", "maxItems": 10**9}}}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "string", "pattern": "a{1000000}"}}}]}, "tools"),
    ({"messages": [{"role": "tool", "content": "18 C"}]}, "messages"),
    ({"messages": [{"role": "user", "content": None}]}, "messages"),
])
def test_what_cannot_be_honoured_is_refused_with_the_field_at_fault(
        enclave: Enclave, idp: Idp, spy: Spy, body: dict[str, Any], param: str) -> None:
    answer = _call(enclave, {"messages": ASK, **body}, idp.token())
    error = _error(answer)
    assert (answer.status, error["code"], error["param"]) == (400, "enclave.bad_request", param)
    assert error["type"] == "invalid_request_error" and spy.given == []


def test_completions_refuse_chat_only_fields(enclave: Enclave, idp: Idp, spy: Spy) -> None:
    for extra, param in (({"suffix": "!"}, "suffix"), ({"tools": [WEATHER]}, "tools"),
                         ({"logprobs": 6}, "logprobs"), ({"best_of": 2}, "best_of")):
        answer = _call(enclave, {"prompt": "x", **extra}, idp.token(),
                       path=proto.COMPLETIONS_PATH)
        assert (answer.status, _error(answer)["param"]) == (400, param)
    assert spy.given == []


def test_a_prompt_the_engine_cannot_fit_is_refused_before_the_stream(tmp_path: Path,
                                                                     idp: Idp) -> None:
    too_long = EnclaveError("enclave.context_length_exceeded", "This model's maximum context "
                            "length is 8 tokens.", param="messages")
    spy = Spy(refuse=too_long)
    enclave = start_enclave(tmp_path / "e", idp, engine=spy)
    try:
        with EnclaveSession(enclave.url, sim_policy(),
                            sim_roots=frozenset({enclave.sim_root})) as session:
            stream = session.stream("POST", proto.CHAT_PATH, authorization=f"Bearer "
                                    f"{idp.token()}", body=json.dumps(
                                        {"messages": ASK, "stream": True}).encode())
            content = b"".join(stream.iter_content())
        assert stream.status == 400  # a plain error answer: no stream was started
        assert json.loads(content) == {"error": {
            "message": "This model's maximum context length is 8 tokens.",
            "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded"}}
        whole = _call(enclave, {"messages": ASK}, idp.token())
        assert whole.status == 400 and _error(whole)["code"] == "context_length_exceeded"
        sink = enclave.booted.service.audit
        assert isinstance(sink, AuditLogSink)
        # Both recorded: allowed, given to the engine, ended in error with no answer.
        entries = [parse_entry(sink.audit_log.entry(i)) for i in range(sink.audit_log.size)]
        assert [(e.ended, e.answer, e.completion_tokens) for e in entries] == [
            ("error", None, 0), ("error", None, 0)]
    finally:
        enclave.stop()


def test_models_routes_and_route_errors_are_openai_errors(enclave: Enclave, idp: Idp) -> None:
    one = _call(enclave, None, idp.token(), path=proto.model_path(DEFAULT_MODEL_ID),
                method="GET")
    assert one.status == 200
    assert json.loads(one.content)["id"] == DEFAULT_MODEL_ID == enclave.settings.model_id
    for path, method, status, code in (
            (proto.model_path("org/other model"), "GET", 404, "model_not_found"),
            ("/v1/models/%ff", "GET", 404, "enclave.no_route"),
            ("/v1/embeddings", "POST", 404, "enclave.no_route"),
            (proto.model_path(DEFAULT_MODEL_ID), "POST", 405, "enclave.method_not_allowed"),
            (proto.CHAT_PATH, "GET", 405, "enclave.method_not_allowed")):
        answer = _call(enclave, None if method == "GET" else {}, idp.token(), path=path,
                       method=method)
        assert (answer.status, _error(answer)["code"]) == (status, code), path
    # Reading a model needs a valid token, not an inference grant.
    patient = _call(enclave, None, idp.token(roles=("patient",)),
                    path=proto.model_path(DEFAULT_MODEL_ID), method="GET")
    assert patient.status == 200


# --- the commitment ---------------------------------------------------------------------------


OPTIONS = st.fixed_dictionaries({}, optional={
    "stop": st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3).map(tuple),
    "n": st.integers(2, 8),
    "presence_penalty": st.floats(-2, 2).filter(bool),
    "logit_bias": st.lists(st.tuples(st.integers(0, 9999), st.floats(-100, 100)),
                           min_size=1, max_size=3, unique_by=lambda b: b[0]).map(
                               lambda b: tuple(sorted(b))),
    "logprobs": st.integers(0, 20),
    "tools": st.just((Tool("f", "d", '{"type":"object","properties":{}}'),)),
    "tool_choice": st.sampled_from(["none", "required"]),
    "response_format": st.sampled_from([ResponseFormat("json_object"),
                                        ResponseFormat("json_schema", '{"b":1,"a":2}', "r")]),
})


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=20), st.just(ASK)), OPTIONS)
def test_committed_options_round_trip(value: Any, options: dict[str, Any]) -> None:
    params = SamplingParams(**options)
    assert parse_commitment_input(commitment_input(value, params)) == (value, params)


@pytest.mark.parametrize("data", [
    b'{"input":"x","n":"2"}', b'{"input":"x","n":true}', b'{"input":"x","tool_choice":"auto"}',
    b'{"input":"x","presence_penalty":1}', b'{"input":"x","logit_bias":{"01":1.0}}',
    b'{"input":"x","temperature":0.5}', b'{"input":"x","tools":[{"name":"a b",'
    b'"description":"","parameters":"{}"}]}', b'{"input":"x","response_format":'
    b'{"type":"json_schema"}}', b'{"input":"x"}',
    b'{"input":[{"role":"tool","content":"r"}],"n":2}',
])
def test_a_malformed_committed_input_is_refused(data: bytes) -> None:
    with pytest.raises(MedclaveError) as caught:
        parse_commitment_input(data)
    assert caught.value.code == "input.malformed"


def test_schema_bounds() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    for schema in ({"$ref": "https://x.example/s.json"}, {"items": {"$ref": "other.json"}},
                   {"type": "string", "maxLength": 5000}, {"minItems": -1}, deep,
                   {"type": "string", "pattern": "x" * 2000}, {"enum": [float("nan")]},
                   {"type": "integer", "minimum": 10**30}, [1]):
        with pytest.raises(EnclaveError) as caught:
            check_schema(schema, param="tools")
        assert caught.value.code == "enclave.bad_request", schema
    check_schema({"type": "object", "properties": {"maxLength": {"type": "string"}},
                  "$defs": {"a": {"type": "string", "maxLength": 100}},
                  "items": {"$ref": "#/$defs/a"}}, param="tools")
