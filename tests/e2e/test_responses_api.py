"""Issue 10 §6: the Responses API (``POST /v1/responses``) for an unchanged app: the official
``openai`` client -> proxy -> (operator's relay) -> enclave -> llama.cpp, plain, streamed, and
continued with ``previous_response_id`` (state kept in the enclave, the owner's only).

The audit entry of a Responses call commits to what the engine saw: the chat messages it was
translated to. The tests open each prompt commitment with messages they write out themselves.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from medclave.audit import AuditEntry, open_commitment
from medclave.enclave.model import DEFAULT_MODEL_ID
from tests.e2e.helpers import Enclave, Idp, Relay, audit_log, tenant_key, wait_for_entry

QUESTION = "In one short sentence, what does an elevated troponin level suggest?"
INSTRUCTIONS = "You are a concise clinical assistant."


def _app(proxy: str, idp: Idp, sub: str = "dr-alice") -> openai.OpenAI:
    # A token per client: an access token is good for one request until issue 10 §1 lands.
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=idp.token(sub=sub), max_retries=0)


def _committed(messages: list[dict[str, str]]) -> bytes:
    """The chat commitment input, written out here: the messages as compact, sorted JSON."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode()


def _last_entry(enclave: Enclave) -> AuditEntry:
    return wait_for_entry(enclave, audit_log(enclave).size - 1)


def test_a_plain_response(proxy: str, relay: Relay, idp: Idp, llama_enclave: Enclave) -> None:
    before = audit_log(llama_enclave).size
    response = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=QUESTION, instructions=INSTRUCTIONS,
        max_output_tokens=16, temperature=0)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    assert response.instructions == INSTRUCTIONS
    entry = wait_for_entry(llama_enclave, before)
    assert entry.ended in ("stop", "length") and entry.completion_tokens > 0
    assert entry.params is not None and entry.params.max_tokens == 16
    key = tenant_key(llama_enclave)
    open_commitment(key, "prompt", entry.salt, _committed(
        [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]),
        entry.prompt)
    assert entry.answer is not None
    open_commitment(key, "answer", entry.salt, response.output_text.encode(), entry.answer)
    # Only ciphertext crossed the operator's network.
    recording = relay.recording()
    for secret in (QUESTION, INSTRUCTIONS, response.output_text.strip()):
        assert secret.encode() not in recording


def test_a_streamed_response_is_the_event_sequence(proxy: str, idp: Idp) -> None:
    events = list(_app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=QUESTION, max_output_tokens=16, temperature=0,
        stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas):-1] == ["response.output_text.done",
                                         "response.content_part.done",
                                         "response.output_item.done"]
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    text = "".join(d.delta for d in deltas)
    assert last.response.output_text == text and text.strip()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # The same answer as the whole one (greedy, same seed path): streaming is transport only.
    whole = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=QUESTION, max_output_tokens=16, temperature=0,
        extra_body={"seed": 3})
    again = list(_app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=QUESTION, max_output_tokens=16, temperature=0,
        extra_body={"seed": 3}, stream=True))
    assert again[-1].response.output_text == whole.output_text


def test_the_stream_helper_gives_the_final_response(proxy: str, idp: Idp) -> None:
    with _app(proxy, idp).responses.stream(model=DEFAULT_MODEL_ID, input=QUESTION,
                                           max_output_tokens=64, temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text and text.strip()


def test_previous_response_id_continues_the_conversation_for_its_user_only(
        proxy: str, idp: Idp, llama_enclave: Enclave) -> None:
    first_turn = "My patient's name is Zed Quill. Reply with OK."
    first = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=first_turn, instructions=INSTRUCTIONS,
        max_output_tokens=8, temperature=0)
    second = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input="What is my patient's name?",
        previous_response_id=first.id, max_output_tokens=16, temperature=0)
    assert second.previous_response_id == first.id
    # What the engine saw: the first turn and its answer, then the new input (the first
    # turn's instructions are not carried over, as OpenAI does).
    entry = _last_entry(llama_enclave)
    open_commitment(tenant_key(llama_enclave), "prompt", entry.salt, _committed([
        {"role": "user", "content": first_turn},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my patient's name?"}]), entry.prompt)
    third = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input="Thank you.", previous_response_id=second.id,
        max_output_tokens=4, temperature=0)
    assert third.status in ("completed", "incomplete")

    # Another user of the same hospital cannot continue it, and learns nothing: the answer is
    # the one for a response that never existed.
    answers: list[Any] = []
    for sub, rid in (("dr-mallory", first.id), ("dr-alice", "resp_" + "0" * 24)):
        with pytest.raises(openai.NotFoundError) as caught:
            _app(proxy, idp, sub).responses.create(model=DEFAULT_MODEL_ID, input="Go on.",
                                                   previous_response_id=rid)
        assert caught.value.code == "enclave.response_not_found"
        answers.append(caught.value.status_code)
    assert answers == [404, 404]


def test_store_false_cannot_be_continued(proxy: str, idp: Idp) -> None:
    kept_not = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input="Say hello.", store=False, max_output_tokens=4,
        temperature=0)
    assert kept_not.store is False
    with pytest.raises(openai.NotFoundError):
        _app(proxy, idp).responses.create(model=DEFAULT_MODEL_ID, input="Again.",
                                          previous_response_id=kept_not.id)


def test_what_the_enclave_cannot_do_is_a_400(proxy: str, idp: Idp) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _app(proxy, idp).responses.create(model=DEFAULT_MODEL_ID, input="x",
                                          tools=[{"type": "web_search"}])
    assert caught.value.code == "enclave.bad_request"


# --- tools ----------------------------------------------------------------------------------

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"], "additionalProperties": False}
WEATHER = {"type": "function", "name": "get_weather",
           "description": "Get the current weather in a city", "parameters": WEATHER_SCHEMA}
ASK_WEATHER = "What's the weather in Paris?"
SUNNY = json.dumps({"temperature_c": 18, "sky": "sunny"})


def _city(arguments: str) -> str:
    args = json.loads(arguments)
    assert isinstance(args, dict) and set(args) == {"city"} and isinstance(args["city"], str)
    return args["city"]


def test_a_tool_call_round_trip_with_previous_response_id(proxy: str, idp: Idp,
                                                          llama_enclave: Enclave) -> None:
    first = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=30,
        temperature=0, extra_body={"seed": 1})
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    _city(call.arguments)
    # The app runs the tool and hands back its output; the enclave remembers the rest.
    final = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none", max_output_tokens=12, temperature=0, extra_body={"seed": 1},
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": SUNNY}])
    assert final.output_text.strip()
    assert all(item.type == "message" for item in final.output)
    # What the engine saw: the question, the call it made, the tool's output, and the tool
    # offered with tool_choice "none" (the chat commitment input, written out here).
    entry = _last_entry(llama_enclave)
    committed = json.dumps({
        "input": [{"role": "user", "content": ASK_WEATHER},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": call.call_id, "type": "function",
                       "function": {"name": "get_weather", "arguments": call.arguments}}]},
                  {"role": "tool", "content": SUNNY, "tool_call_id": call.call_id}],
        "tools": [{"name": "get_weather", "description": WEATHER["description"],
                   "parameters": json.dumps(WEATHER_SCHEMA, separators=(",", ":"))}],
        "tool_choice": "none"}, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    open_commitment(tenant_key(llama_enclave), "prompt", entry.salt, committed.encode(),
                    entry.prompt)


def test_a_stateless_tool_round_trip_sends_the_call_back(proxy: str, idp: Idp) -> None:
    first = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required", store=False, max_output_tokens=30, temperature=0)
    [call] = [item for item in first.output if item.type == "function_call"]
    final = _app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, tools=[WEATHER], tool_choice="none", store=False,  # type: ignore[list-item]
        max_output_tokens=12, temperature=0,
        input=[{"role": "user", "content": ASK_WEATHER}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": SUNNY}])
    assert final.output_text.strip()


def test_a_streamed_tool_call(proxy: str, idp: Idp) -> None:
    events = list(_app(proxy, idp).responses.create(
        model=DEFAULT_MODEL_ID, input=ASK_WEATHER, tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required", max_output_tokens=30, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [call] = events[-1].response.output
    assert call.type == "function_call" and call.arguments == deltas
    _city(deltas)
