"""The OpenAI Responses API (``POST /v1/responses``), translated to the chat path.

New OpenAI apps and agent SDKs default to Responses. A request is translated into a chat
completions request and then goes exactly where a chat request goes (validation, limits, the
engine, the audit entry, whose prompt commitment is the chat messages the engine saw); only the
answer is shaped differently. What is translated (the shapes are the ``openai`` package's
``types.responses``):

* ``input``: a string (one user message) or a list of items: messages (``role`` user, system,
  developer or assistant; content a string or ``input_text``/``output_text`` parts), the
  ``function_call`` items of an earlier answer and the ``function_call_output`` items that
  answer them (an assistant message with ``tool_calls``, then ``tool`` messages).
* ``instructions``: a system message ahead of everything (not carried to the next turn).
* ``max_output_tokens``, ``temperature``, ``top_p``; ``tools`` (function tools only) and
  ``tool_choice``; ``text.format`` (JSON modes) as ``response_format``; ``top_logprobs``.
  Whatever the chat path cannot do it refuses, so the Responses API refuses it too.
* ``previous_response_id``: the conversation kept in enclave memory
  (:mod:`medclave.enclave.response_store`), this user's only.
* ``store`` (default true, as OpenAI's): whether this response may be continued. False keeps
  nothing.

Refused rather than ignored: other tool and item types, ``reasoning``, ``background``,
``conversation``, ``prompt``, ``include``, ``max_tool_calls``, ``truncation: "auto"`` (the
enclave never drops context silently). Fields that cannot change the answer (``metadata``,
``user``, ``safety_identifier``, ``prompt_cache_key``, ``service_tier``) are accepted.

A streamed answer is the Responses event sequence (:class:`EventShaper`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medclave.enclave.engines.base import Choice, Completion, Delta, TokenLogprob
from medclave.enclave.openai_answers import tool_call_id
from medclave.enclave.openai_api import MAX_MESSAGES, MAX_PROMPT_CHARS
from medclave.enclave.response_store import Message, Owner, ResponseStore
from medclave.errors import EnclaveError

MAX_TOOLS = 64
_REFUSED = ("reasoning", "background", "conversation", "prompt", "include", "max_tool_calls")
_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text", "text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


def _text(content: str | list[_Part]) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[_Part] = Field(max_length=MAX_PROMPT_CHARS)


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(pattern=_NAME)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS)


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: str | list[_Part] = Field(max_length=MAX_PROMPT_CHARS)


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem,
                      Field(discriminator="type")]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: str = Field(pattern=_NAME)
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    name: str = Field(pattern=_NAME)


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=256)
    input: str | list[InputItem] = Field(max_length=MAX_MESSAGES)
    instructions: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)  # an extension: replay needs it
    stream: bool = False
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    truncation: Literal["disabled"] | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    store: bool = True
    metadata: dict[str, str] | None = Field(default=None, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _typed(cls, value: Any) -> Any:
        """An input message may omit ``type`` (OpenAI's "easy" input message); a tool that is
        not a function is named in the refusal rather than failing the union."""
        if isinstance(value, dict):
            items = value.get("input")
            if isinstance(items, list):
                value = {**value, "input": [
                    {**i, "type": "message"} if isinstance(i, dict) and "type" not in i
                    and "role" in i else i for i in items]}
            tools = value.get("tools")
            if isinstance(tools, list):
                other = sorted({str(t.get("type")) for t in tools
                                if isinstance(t, dict) and t.get("type") != "function"})
                if other:
                    raise ValueError(f"only function tools are supported here, not {other}")
        return value

    def refused(self) -> list[str]:
        extra = self.model_extra or {}
        return [k for k in _REFUSED if extra.get(k) not in (None, False, [], {})]


def parse_request(body: Any) -> ResponsesRequest:
    try:
        request = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise EnclaveError("enclave.bad_request", f"{where}: {err.get('msg', 'invalid')}"
                           ) from None
    refused = request.refused()
    if refused:
        raise EnclaveError("enclave.bad_request", f"not supported here: {', '.join(refused)}")
    return request


def _messages(items: Sequence[MessageItem | FunctionCallItem | FunctionCallOutputItem]
              ) -> list[dict[str, Any]]:
    """Input items as chat messages: function calls join the assistant turn they follow."""
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            out.append({"role": "tool", "tool_call_id": item.call_id,
                        "content": _text(item.output)})
    return out


class Conversation:
    """One Responses request: its chat translation, and how its answer is shaped and kept."""

    def __init__(self, request: ResponsesRequest, store: ResponseStore, owner: Owner) -> None:
        self.request = request
        self._store = store
        self._owner = owner
        history: tuple[Message, ...] = ()
        if request.previous_response_id is not None:
            history = store.get(request.previous_response_id, owner)
        items = ([MessageItem(role="user", content=request.input)]
                 if isinstance(request.input, str) else request.input)
        self.turn: list[Message] = [*history, *_messages(items)]

    def chat_body(self) -> dict[str, Any]:
        """The chat completions request this one is (validated by the chat path)."""
        r = self.request
        system = [{"role": "system", "content": r.instructions}] if r.instructions else []
        body: dict[str, Any] = {"messages": [*system, *self.turn], "stream": r.stream}
        for key, value in (("model", r.model), ("max_completion_tokens", r.max_output_tokens),
                           ("temperature", r.temperature), ("top_p", r.top_p),
                           ("seed", r.seed)):
            if value is not None:
                body[key] = value
        if r.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(
                exclude={"type"}, exclude_none=True)} for t in r.tools]
            if r.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = r.parallel_tool_calls
        if isinstance(r.tool_choice, FunctionChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": r.tool_choice.name}}
        elif r.tool_choice is not None:
            body["tool_choice"] = r.tool_choice
        fmt = r.text.format if r.text is not None else None
        if fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            schema: dict[str, Any] = {"name": fmt.name or "response",
                                      "schema": fmt.schema_ or {}}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if r.top_logprobs:
            body.update(logprobs=True, top_logprobs=r.top_logprobs)
        return body

    # --- the answer ----------------------------------------------------------------------------

    def remember(self, rid: str, answer: Choice) -> None:
        """Keep the conversation with its answer, if the caller asked for it (``store``)."""
        if not self.request.store:
            return
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.tool_calls:
            message["tool_calls"] = [
                {"id": call.call_id, "type": "function",
                 "function": {"name": call.name, "arguments": call.arguments}}
                for call in calls_of(rid, answer)]
        self._store.put(response_id(rid), self._owner, [*self.turn, message])

    def answer(self, rid: str, created: int, model: str, completion: Completion
               ) -> dict[str, Any]:
        choice = completion.all_choices[0]
        status, incomplete = _status(choice.finish_reason)
        output = _output(rid, choice, status)
        return self.response(rid, created, model, status=status, output=output,
                             usage=_usage(completion.prompt_tokens,
                                          completion.completion_tokens),
                             incomplete=incomplete)

    def shaper(self, rid: str, created: int, model: str) -> EventShaper:
        return EventShaper(self, rid, created, model)

    def response(self, rid: str, created: int, model: str, *, status: str,
                 output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 incomplete: str | None = None, error: dict[str, str] | None = None
                 ) -> dict[str, Any]:
        """The ``Response`` object (``openai.types.responses.Response``)."""
        r = self.request
        fmt = r.text.format if r.text is not None and r.text.format is not None else None
        return {
            "id": response_id(rid), "object": "response", "created_at": created,
            "status": status, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": r.instructions, "max_output_tokens": r.max_output_tokens,
            "model": model, "output": output,
            "parallel_tool_calls": r.parallel_tool_calls is not False,
            "previous_response_id": r.previous_response_id, "store": r.store,
            "temperature": 1.0 if r.temperature is None else r.temperature,
            "top_p": 1.0 if r.top_p is None else r.top_p,
            "tool_choice": (r.tool_choice.model_dump() if isinstance(r.tool_choice, FunctionChoice)
                            else r.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in r.tools or ()],
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True)
                     if fmt is not None else {"type": "text"}},
            "truncation": "disabled", "usage": usage, "metadata": r.metadata or {},
        }


class ToolCallOut:
    """A function call of the answer: its item id, and its ``call_id``, which is the id the
    chat path gives the same call (so a continued conversation names it alike)."""

    def __init__(self, rid: str, index: int, name: str, arguments: str) -> None:
        self.id = f"fc_{rid}_{index}"
        self.call_id = tool_call_id(rid, 0, index)
        self.name = name
        self.arguments = arguments

    def item(self, status: str = "completed") -> dict[str, Any]:
        return {"type": "function_call", "id": self.id, "call_id": self.call_id,
                "name": self.name, "arguments": self.arguments, "status": status}


def calls_of(rid: str, choice: Choice) -> list[ToolCallOut]:
    return [ToolCallOut(rid, k, c.name, c.arguments) for k, c in enumerate(choice.tool_calls)]


def response_id(rid: str) -> str:
    return f"resp_{rid}"


def _status(finish_reason: str) -> tuple[str, str | None]:
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


def _logprobs(entries: Sequence[TokenLogprob] | None) -> list[dict[str, Any]]:
    """``top_logprobs``' answer: each token's log-probability and the likeliest alternatives."""
    return [{"token": e.token, "bytes": list(e.bytes), "logprob": e.logprob,
             "top_logprobs": [{"token": t.token, "bytes": list(t.bytes), "logprob": t.logprob}
                              for t in e.top]} for e in entries or ()]


def _text_part(text: str, logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [],
            "logprobs": _logprobs(logprobs)}


def _message(rid: str, text: str | None, status: str,
             logprobs: Sequence[TokenLogprob] | None = None) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text, logprobs)]
    return {"type": "message", "id": f"msg_{rid}", "status": status, "role": "assistant",
            "content": content}


def _output(rid: str, choice: Choice, status: str) -> list[dict[str, Any]]:
    """A message when there is text or nothing else, then the function calls."""
    calls = calls_of(rid, choice)
    items = [_message(rid, choice.text, status, choice.logprobs)] \
        if choice.text or not calls else []
    return items + [c.item() for c in calls]


class EventShaper:
    """The server-sent events of a streamed response (``ResponseStreamEvent``): created and
    in progress; then each output item as it begins (the message and its text part at the
    first text, a function call at its name) with its deltas; at the end every item done
    (text done, part done, item done; arguments done, item done), and ``response.completed``
    (``response.incomplete`` when ``max_output_tokens`` cut it short) with the whole response.
    """

    def __init__(self, conversation: Conversation, rid: str, created: int, model: str) -> None:
        self._conversation = conversation
        self._rid = rid
        self._created = created
        self._model = model
        self._seq = 0
        self._parts: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._message: int | None = None  # the message's output index, once opened
        self._calls: dict[int, tuple[int, ToolCallOut]] = {}  # call index -> (output index, call)

    def _event(self, type_: str, **fields: Any) -> bytes:
        data = json.dumps({"type": type_, "sequence_number": self._seq, **fields},
                          separators=(",", ":"))
        self._seq += 1
        return f"event: {type_}\ndata: {data}\n\n".encode()

    def _response(self, status: str, output: list[dict[str, Any]], **extra: Any
                  ) -> dict[str, Any]:
        return self._conversation.response(self._rid, self._created, self._model,
                                           status=status, output=output, **extra)

    @property
    def _opened(self) -> int:
        return (self._message is not None) + len(self._calls)

    def first(self) -> bytes:
        created = self._response("in_progress", [])
        return (self._event("response.created", response=created)
                + self._event("response.in_progress", response=created))

    def _open_message(self) -> bytes:
        if self._message is not None:
            return b""
        self._message = self._opened
        return (self._event("response.output_item.added", output_index=self._message,
                            item=_message(self._rid, None, "in_progress"))
                + self._event("response.content_part.added", output_index=self._message,
                              item_id=f"msg_{self._rid}", content_index=0,
                              part=_text_part("")))

    def delta(self, d: Delta) -> bytes:
        out = b""
        if d.text:
            out += self._open_message()
            self._parts.append(d.text)
            self._logprobs.extend(d.logprobs)
            out += self._event("response.output_text.delta", output_index=self._message,
                               item_id=f"msg_{self._rid}", content_index=0, delta=d.text,
                               logprobs=_logprobs(d.logprobs))
        piece = d.tool_call
        if piece is not None and piece.index not in self._calls and piece.name is not None:
            at, call = self._opened, ToolCallOut(self._rid, piece.index, piece.name, "")
            self._calls[piece.index] = (at, call)
            out += self._event("response.output_item.added", output_index=at,
                               item=call.item("in_progress"))
        if piece is not None and piece.index in self._calls:
            at, call = self._calls[piece.index]
            if piece.arguments:
                call.arguments += piece.arguments
                out += self._event("response.function_call_arguments.delta", output_index=at,
                                   item_id=call.id, delta=piece.arguments)
        if d.final:
            out += self._finish(d)
        return out

    def _finish(self, d: Delta) -> bytes:
        status, incomplete = _status(d.finish_reason or "stop")
        out = b"" if self._calls else self._open_message()  # an answer has an item
        items: dict[int, dict[str, Any]] = {}
        if self._message is not None:
            text, item_id = "".join(self._parts), f"msg_{self._rid}"
            items[self._message] = _message(self._rid, text, status, self._logprobs)
            out += (self._event("response.output_text.done", output_index=self._message,
                                item_id=item_id, content_index=0, text=text,
                                logprobs=_logprobs(self._logprobs))
                    + self._event("response.content_part.done", output_index=self._message,
                                  item_id=item_id, content_index=0,
                                  part=_text_part(text, self._logprobs))
                    + self._event("response.output_item.done", output_index=self._message,
                                  item=items[self._message]))
        for at, call in self._calls.values():
            items[at] = call.item()
            out += (self._event("response.function_call_arguments.done", output_index=at,
                                item_id=call.id, arguments=call.arguments)
                    + self._event("response.output_item.done", output_index=at, item=items[at]))
        final = self._response(status, [items[i] for i in sorted(items)],
                               usage=_usage(d.prompt_tokens, d.completion_tokens),
                               incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=final)

    def error(self, code: str, message: str) -> bytes:
        """The ``error`` event names the Medclave code; the failed response's ``error.code``
        is from OpenAI's own list (``ResponseError``), where a stream that fails is
        ``server_error``."""
        failed = self._response("failed", [], error={"code": "server_error", "message": message})
        return (self._event("error", code=code, message=message, param=None)
                + self._event("response.failed", response=failed))

    @staticmethod
    def done() -> bytes:
        return b""  # a Responses stream ends with its last event, not with ``[DONE]``
