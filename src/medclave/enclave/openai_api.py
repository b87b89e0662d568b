"""The OpenAI-compatible API spoken inside the encapsulation: requests, within bounds.

What an ordinary client sends is accepted (messages with tool calls and tool results, tools and
``tool_choice``, ``response_format``, ``logprobs``, ``n``, ``logit_bias``, the penalties); what
the enclave cannot do is refused with ``400`` and the field at fault as ``param`` rather than
silently ignored, except fields that cannot change the answer (``user``, ``metadata``...).

The answers' shapes are :mod:`.openai_answers`'s; what the audit commits to is
:mod:`.commitment`'s. Both are re-exported here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medclave.enclave.commitment import (
    ModelInput,
    commitment_input,
    committed_answer,
    parse_commitment_input,
    prompt_commitment_bytes,
)
from medclave.enclave.engines.base import ResponseFormat, SamplingParams, Tool
from medclave.enclave.engines.grammar import TOOL_NAME, check_schema, compact
from medclave.enclave.openai_answers import (
    ChunkShaper,
    chat_answer,
    completion_answer,
    model_answer,
    models_answer,
    sse,
    usage,
)
from medclave.errors import EnclaveError

__all__ = [
    "ChatRequest", "ChunkShaper", "CompletionRequest", "ModelInput",
    "chat_answer", "commitment_input", "committed_answer", "completion_answer", "messages_of",
    "model_answer", "models_answer", "parse_commitment_input", "parse_request",
    "prompt_commitment_bytes", "sampling", "sse", "usage",
]

MAX_MESSAGES = 256
MAX_PROMPT_CHARS = 256 * 1024
MAX_STOP = 4
MAX_N = 8  # each choice is a whole generation
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 300
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions API's limit

_UNSUPPORTED_CHAT = ("functions", "function_call", "audio", "modalities", "prediction",
                     "web_search_options", "reasoning_effort")
_UNSUPPORTED_COMPLETION = ("tools", "tool_choice", "response_format", "suffix")
_WHY = {"functions": "use tools", "function_call": "use tool_choice",
        "suffix": "this engine does not fill in the middle"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class _FunctionCall(_Strict):
    name: str = Field(pattern=TOOL_NAME.pattern)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS)


class _ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: _FunctionCall


class ChatMessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    tool_calls: list[_ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(p.text for p in self.content)


class _Function(_Strict):
    name: str = Field(pattern=TOOL_NAME.pattern)
    description: str = Field(default="", max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolIn(_Strict):
    type: Literal["function"]
    function: _Function


class _FunctionName(_Strict):
    name: str = Field(pattern=TOOL_NAME.pattern)


class _Named(_Strict):
    type: Literal["function"] = "function"
    function: _FunctionName


class _JsonSchema(_Strict):
    name: str = Field(default="response", max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class _ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOP or any(not s or len(s) > 256 for s in items):
            raise ValueError("stop: at most 4 sequences of 1 to 256 characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit() or len(token) > 9 or not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias maps token ids to biases from -100 to 100")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def unsupported(self, names: tuple[str, ...]) -> list[str]:
        extra = self.model_extra or {}
        return [k for k in names if extra.get(k) not in (None, False, [], {})]


class ChatRequest(_Common):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[_ToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | _Named | None = None
    parallel_tool_calls: bool | None = None  # one call per answer satisfies either
    response_format: _ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(max_length=MAX_PROMPT_CHARS)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1, le=1)

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise EnclaveError("enclave.bad_request", "one prompt per request", param="prompt")
        return self.prompt[0]


def parse_request(kind: type[ChatRequest] | type[CompletionRequest], body: Any
                  ) -> ChatRequest | CompletionRequest:
    try:
        request = kind.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise EnclaveError("enclave.bad_request", f"{where}: {err.get('msg', 'invalid')}",
                           param=str(err["loc"][0]) if err.get("loc") else None) from None
    chat = isinstance(request, ChatRequest)
    for name in request.unsupported(_UNSUPPORTED_CHAT if chat else _UNSUPPORTED_COMPLETION):
        why = _WHY.get(name, "the enclave cannot honour it")
        raise EnclaveError("enclave.bad_request", f"{name} is not supported here ({why})",
                           param=name)
    if isinstance(request, CompletionRequest) and request.echo:
        raise EnclaveError("enclave.bad_request", "echo is not supported", param="echo")
    if request.stream and (request.n or 1) > 1:
        raise EnclaveError("enclave.bad_request", "n > 1 is not streamed here; ask without "
                           "stream, or n times", param="n")
    return request


def sampling(request: ChatRequest | CompletionRequest, *, limit: int, default_seed: int
             ) -> SamplingParams:
    """The engine parameters, OpenAI defaults where absent; the seed is always set, so the
    audit record can name it and the answer can be replayed."""
    wanted = request.max_tokens
    if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
        wanted = request.max_completion_tokens
    max_tokens = wanted if wanted is not None else min(256, limit)
    if max_tokens > limit:
        raise EnclaveError("enclave.bad_request", f"max_tokens is at most {limit} here",
                           param="max_tokens")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=default_seed if request.seed is None else request.seed,
        stop=request.stops(),
        strict_length=wanted is not None,
        n=request.n or 1,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=tuple(sorted((int(t), float(b)) for t, b in
                                (request.logit_bias or {}).items())),
    )
    if isinstance(request, CompletionRequest):
        return replace(params, logprobs=request.logprobs)
    return _chat_sampling(request, params)


def _chat_sampling(request: ChatRequest, params: SamplingParams) -> SamplingParams:
    if request.top_logprobs is not None and not request.logprobs:
        raise EnclaveError("enclave.bad_request", "top_logprobs needs logprobs: true",
                           param="top_logprobs")
    tools = tuple(_tool(t.function) for t in request.tools or ())
    if len({t.name for t in tools}) != len(tools):
        raise EnclaveError("enclave.bad_request", "tools: two functions share a name",
                           param="tools")
    choice = request.tool_choice
    name = choice.function.name if isinstance(choice, _Named) else None
    if (name is not None or choice == "required") and not tools:
        raise EnclaveError("enclave.bad_request", "tool_choice needs tools", param="tool_choice")
    if name is not None and name not in {t.name for t in tools}:
        raise EnclaveError("enclave.bad_request", f"tool_choice names {name!r}, which is not "
                           "in tools", param="tool_choice")
    return replace(
        params, logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        tools=tools, tool_name=name,
        tool_choice="required" if name is not None else choice if isinstance(choice, str)
        else "auto",
        response_format=_response_format(request.response_format))


def _tool(function: _Function) -> Tool:
    schema = function.parameters if function.parameters is not None else {
        "type": "object", "properties": {}}
    check_schema(schema, param="tools")
    return Tool(function.name, function.description, compact(schema))


def _response_format(given: _ResponseFormat | None) -> ResponseFormat | None:
    if given is None or given.type == "text":
        return None
    if given.type == "json_object":
        return ResponseFormat("json_object")
    if given.json_schema is None or given.json_schema.schema_ is None:
        raise EnclaveError("enclave.bad_request", "response_format: json_schema needs its "
                           "schema", param="response_format")
    check_schema(given.json_schema.schema_, param="response_format")
    return ResponseFormat("json_schema", compact(given.json_schema.schema_),
                          given.json_schema.name)


def messages_of(request: ChatRequest) -> list[dict[str, Any]]:
    """The messages as the engine receives them (and the commitment covers them): ``role`` and
    ``content`` text, ``developer`` as ``system``; an assistant's ``tool_calls`` and a tool's
    ``tool_call_id`` where there are any."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "tool":
            if m.tool_call_id is None:
                raise EnclaveError("enclave.bad_request", "a tool message needs its "
                                   "tool_call_id", param="messages")
            out.append({"role": "tool", "content": m.text(), "tool_call_id": m.tool_call_id})
            continue
        message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                                   "content": m.text()}
        if m.tool_calls and m.role == "assistant":
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in m.tool_calls]
        elif m.content is None:
            raise EnclaveError("enclave.bad_request", f"a {m.role} message needs content",
                               param="messages")
        out.append(message)
    size = sum(len(m["content"]) + sum(len(c["function"]["arguments"])
                                       for c in m.get("tool_calls", ())) for m in out)
    if size > MAX_PROMPT_CHARS:
        raise EnclaveError("enclave.bad_request", "the messages are too long", param="messages")
    return out
