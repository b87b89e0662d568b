"""The Responses API translated to the chat path, its answer and event shapes as the official
``openai`` package parses them, and the in-enclave store behind ``previous_response_id``.
No server, no model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from medclave.enclave.engines.base import Choice, Completion, Delta, ToolCall, ToolCallDelta
from medclave.enclave.openai_api import ChatRequest, parse_request
from medclave.enclave.response_store import ResponseStore
from medclave.enclave.responses import Conversation
from medclave.enclave.responses import parse_request as parse_responses
from medclave.errors import EnclaveError

ALICE = ("st-marys", "dr-alice")
BOB = ("st-marys", "dr-bob")
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def _store(**kw: Any) -> ResponseStore:
    return ResponseStore(**{"ttl": 60.0, "per_user": 8, "max_bytes": 1 << 20, **kw})


def _conversation(body: dict[str, Any], store: ResponseStore | None = None,
                  owner: tuple[str, str] = ALICE) -> Conversation:
    return Conversation(parse_responses(body), _store() if store is None else store, owner)


def _refused(body: dict[str, Any]) -> str:
    with pytest.raises(EnclaveError) as caught:
        _conversation(body)
    assert caught.value.code == "enclave.bad_request"
    return caught.value.detail


# --- translation ----------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_system_and_a_user_message() -> None:
    body = _conversation({"model": "m", "input": "Is 38.4 C a fever?",
                          "instructions": "Answer briefly.", "max_output_tokens": 20,
                          "temperature": 0, "top_p": 0.5}).chat_body()
    assert body == {"model": "m", "stream": False, "max_completion_tokens": 20,
                    "temperature": 0, "top_p": 0.5,
                    "messages": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "Is 38.4 C a fever?"}]}
    chat = parse_request(ChatRequest, body)  # the chat path takes it as it is
    assert isinstance(chat, ChatRequest) and chat.max_completion_tokens == 20


def test_input_items_become_chat_messages_in_order() -> None:
    body = _conversation({"input": [
        {"role": "developer", "content": "Use SI units."},  # an "easy" message: no type
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Weight "},
                     {"type": "input_text", "text": "in kg?"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "chart", "arguments": "{}",
         "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "vitals",
         "arguments": "{\"bed\":7}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "72 kg"},
        {"type": "function_call_output", "call_id": "call_2", "output": "BP 120/80"},
    ]}).chat_body()
    assert body["messages"] == [
        {"role": "developer", "content": "Use SI units."},
        {"role": "user", "content": "Weight in kg?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "chart", "arguments": "{}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "vitals", "arguments": "{\"bed\":7}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "72 kg"},
        {"role": "tool", "tool_call_id": "call_2", "content": "BP 120/80"},
    ]


def test_function_tools_and_formats_map_to_their_chat_fields() -> None:
    schema = {"type": "object", "properties": {"bed": {"type": "integer"}}}
    body = _conversation({
        "input": "Vitals for bed 7?",
        "tools": [{"type": "function", "name": "vitals", "description": "Latest vitals.",
                   "parameters": schema, "strict": True}],
        "tool_choice": {"type": "function", "name": "vitals"}, "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "vitals", "schema": schema}},
        "top_logprobs": 2,
    }).chat_body()
    assert body["tools"] == [{"type": "function", "function": {
        "name": "vitals", "description": "Latest vitals.", "parameters": schema,
        "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "vitals"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "vitals", "schema": schema}}
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert _conversation({"input": "x", "tool_choice": "required", "tools": [
        {"type": "function", "name": "f"}]}).chat_body()["tool_choice"] == "required"
    assert _conversation({"input": "x", "text": {"format": {"type": "json_object"}}}
                         ).chat_body()["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(("body", "named"), [
    ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "web_search"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
])
def test_what_cannot_be_done_is_refused_not_ignored(body: dict[str, Any], named: str) -> None:
    assert named in _refused(body)


# --- answers, as the openai package reads them --------------------------------------------------


def test_a_whole_answer_is_an_openai_response() -> None:
    conversation = _conversation({"input": "hi", "instructions": "Be brief.",
                                  "metadata": {"ward": "7"}})
    body = conversation.answer("abc", 1700000000, "m", Completion("Hello there.", "stop", 9, 3))
    response = Response.model_validate(body)
    assert response.id == "resp_abc" and response.status == "completed"
    assert response.output_text == "Hello there."
    assert response.usage is not None and response.usage.total_tokens == 12
    assert response.instructions == "Be brief." and response.metadata == {"ward": "7"}
    cut = Response.model_validate(conversation.answer("abd", 0, "m",
                                                      Completion("Hel", "length", 9, 1)))
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


def _events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        event_line, data_line = block.split("\n")
        event = EVENTS.validate_python(json.loads(data_line.removeprefix("data: ")))
        assert event_line == f"event: {event.type}"
        out.append(event)
    return out


def test_a_streamed_answer_is_the_responses_event_sequence() -> None:
    shaper = _conversation({"input": "hi", "stream": True}).shaper("abc", 0, "m")
    raw = shaper.first() + shaper.delta(Delta("Hel")) + shaper.delta(Delta("lo."))
    raw += shaper.delta(Delta("", "stop", 9, 2)) + shaper.done()
    events = _events(raw)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas == "Hello."
    assert final.id == events[0].response.id == "resp_abc"
    assert final.usage.output_tokens == 2


def test_a_stream_cut_short_or_failed_says_so() -> None:
    shaper = _conversation({"input": "hi", "stream": True}).shaper("abc", 0, "m")
    cut = _events(shaper.first() + shaper.delta(Delta("Hel")) + shaper.delta(
        Delta("", "length", 9, 1)))
    assert cut[-1].type == "response.incomplete"
    assert cut[-1].response.incomplete_details.reason == "max_output_tokens"
    failed = _events(shaper.error("enclave.engine_failed", "The inference engine failed."))
    assert [e.type for e in failed] == ["error", "response.failed"]
    assert failed[0].code == "enclave.engine_failed"


# --- previous_response_id: kept in memory, the owner's only --------------------------------------


def test_a_conversation_continues_for_its_owner_only() -> None:
    store = _store()
    first = _conversation({"input": "My name is Zed.", "instructions": "Be brief."}, store)
    first.remember("one", Choice("Hello Zed.", "stop"))
    body = _conversation({"input": "What is my name?", "previous_response_id": "resp_one"},
                         store).chat_body()
    # The conversation continues; the first turn's instructions do not (OpenAI's rule).
    assert body["messages"] == [{"role": "user", "content": "My name is Zed."},
                                {"role": "assistant", "content": "Hello Zed."},
                                {"role": "user", "content": "What is my name?"}]
    with pytest.raises(EnclaveError) as others:
        _conversation({"input": "?", "previous_response_id": "resp_one"}, store, owner=BOB)
    with pytest.raises(EnclaveError) as unknown:
        _conversation({"input": "?", "previous_response_id": "resp_nope"}, store)
    with pytest.raises(EnclaveError) as other_tenant:
        _conversation({"input": "?", "previous_response_id": "resp_one"}, store,
                      owner=("st-judes", "dr-alice"))
    # Another user's response and one that never existed get the same answer.
    for caught in (others, unknown, other_tenant):
        assert caught.value.code == "enclave.response_not_found"
        assert caught.value.public_message == unknown.value.public_message
        assert caught.value.status == 404


def test_store_false_keeps_nothing() -> None:
    store = _store()
    _conversation({"input": "x", "store": False}, store).remember("one", Choice("y", "stop"))
    assert len(store) == 0


def test_kept_responses_expire_and_are_bounded() -> None:
    now = [0.0]
    store = _store(ttl=10.0, per_user=2, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        store.put(name, ALICE, [{"role": "user", "content": name}])
    with pytest.raises(EnclaveError):
        store.get("a", ALICE)  # the user's oldest went, to keep two
    assert store.get("c", ALICE)[0]["content"] == "c"
    store.put("d", BOB, [{"role": "user", "content": "d"}])
    now[0] = 10.5
    for name, owner in (("b", ALICE), ("c", ALICE), ("d", BOB)):
        with pytest.raises(EnclaveError):
            store.get(name, owner)
    assert len(store) == 0
    small = _store(max_bytes=100)
    assert not small.put("big", ALICE, [{"role": "user", "content": "x" * 200}])
    for i in range(5):
        assert small.put(str(i), (f"t{i}", "u"), [{"role": "user", "content": "y" * 10}])
    assert len(small) == 2  # 40 bytes each (as compact JSON): the oldest went first


# --- tools ----------------------------------------------------------------------------------


def test_a_tool_call_answer_is_a_function_call_item_that_the_next_turn_can_answer() -> None:
    store = _store()
    tools = [{"type": "function", "name": "vitals", "parameters": {"type": "object"}}]
    first = _conversation({"input": "Vitals for bed 7?", "tools": tools}, store)
    call = ToolCall("vitals", '{"bed":7}')
    body = first.answer("abc", 0, "m", Completion("", "tool_calls", 9, 5,
                                                  (Choice("", "tool_calls", (call,)),)))
    response = Response.model_validate(body)
    [item] = response.output
    assert item.type == "function_call" and item.name == "vitals"
    assert item.arguments == '{"bed":7}' and item.call_id == "call_abc_0_0"  # the chat id
    first.remember("abc", Choice("", "tool_calls", (call,)))
    # The app runs the tool and answers the call by its call_id.
    follow = _conversation({"previous_response_id": "resp_abc", "tools": tools, "input": [
        {"type": "function_call_output", "call_id": item.call_id, "output": "BP 120/80"}]},
        store).chat_body()
    assert follow["messages"] == [
        {"role": "user", "content": "Vitals for bed 7?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_abc_0_0", "type": "function",
             "function": {"name": "vitals", "arguments": '{"bed":7}'}}]},
        {"role": "tool", "tool_call_id": "call_abc_0_0", "content": "BP 120/80"}]
    # ...which the chat path takes, tool result and all.
    chat = parse_request(ChatRequest, follow)
    assert isinstance(chat, ChatRequest) and [m.role for m in chat.messages] == [
        "user", "assistant", "tool"]


def test_a_streamed_tool_call_is_function_call_events() -> None:
    shaper = _conversation({"input": "Vitals?", "stream": True, "tools": [
        {"type": "function", "name": "vitals"}]}).shaper("abc", 0, "m")
    raw = shaper.first()
    raw += shaper.delta(Delta("", tool_call=ToolCallDelta(0, '{"bed":', "vitals")))
    raw += shaper.delta(Delta("", tool_call=ToolCallDelta(0, "7}")))
    raw += shaper.delta(Delta("", "tool_calls", 9, 4))
    events = _events(raw)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert events[2].item.type == "function_call" and events[2].item.name == "vitals"
    deltas = "".join(e.delta for e in events if e.type.endswith("arguments.delta"))
    [final] = events[-1].response.output
    assert final.type == "function_call" and final.arguments == deltas == '{"bed":7}'
    assert events[-1].response.status == "completed"
