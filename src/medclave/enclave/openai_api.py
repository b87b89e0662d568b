"""The OpenAI-compatible API spoken inside the encapsulation: request models, answer shapes.

Only what an ordinary client sends is accepted, within bounds (messages, lengths, tokens); the
rest of the OpenAI request (tools, logprobs, several choices) is refused with ``400`` rather than
silently ignored, except fields that cannot change the answer (``user``, ``metadata``...).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medclave.enclave.engines.base import Completion, Delta, SamplingParams
from medclave.errors import EnclaveError, InputError

MAX_MESSAGES = 256
MAX_PROMPT_CHARS = 256 * 1024
MAX_STOP = 4

_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs",
                "top_logprobs", "response_format", "logit_bias", "audio", "modalities",
                "prediction", "suffix", "best_of")


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] = Field(max_length=MAX_PROMPT_CHARS)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
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
    n: int | None = Field(default=None, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOP or any(not s or len(s) > 256 for s in items):
            raise ValueError("stop: at most 4 sequences of 1 to 256 characters")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def unsupported(self) -> list[str]:
        extra = self.model_extra or {}
        return [k for k in _UNSUPPORTED if extra.get(k) not in (None, False, [], {})]


class ChatRequest(_Common):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(max_length=MAX_PROMPT_CHARS)
    echo: bool = False

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise EnclaveError("enclave.bad_request", "one prompt per request")
        return self.prompt[0]


def parse_request(kind: type[ChatRequest] | type[CompletionRequest], body: Any
                  ) -> ChatRequest | CompletionRequest:
    try:
        request = kind.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise EnclaveError("enclave.bad_request", f"{where}: {err.get('msg', 'invalid')}"
                           ) from None
    unsupported = request.unsupported()
    if unsupported:
        raise EnclaveError("enclave.bad_request", f"not supported here: {', '.join(unsupported)}")
    if isinstance(request, CompletionRequest) and request.echo:
        raise EnclaveError("enclave.bad_request", "echo is not supported")
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
        raise EnclaveError("enclave.bad_request", f"max_tokens is at most {limit} here")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=default_seed if request.seed is None else request.seed,
        stop=request.stops(),
    )


def messages_of(request: ChatRequest) -> list[dict[str, str]]:
    out = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
           for m in request.messages]
    if sum(len(m["content"]) for m in out) > MAX_PROMPT_CHARS:
        raise EnclaveError("enclave.bad_request", "the messages are too long")
    return out


def prompt_commitment_bytes(value: Any) -> bytes:
    """The bytes the audit commitment covers: the model's input as compact, sorted JSON."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


ModelInput = list[dict[str, str]] | str  # the messages (chat) or the prompt (completion)
_ROLES = frozenset({"system", "user", "assistant"})


def commitment_input(value: ModelInput, stop: tuple[str, ...] = ()) -> bytes:
    """What an inference's prompt commitment covers, and what ``medclave audit replay`` takes.

    The model's input as the engine received it (:func:`messages_of` or the prompt text), with
    the stop sequences when there are any: they change the answer, and the entry's ``params``
    cannot carry them (an entry holds no free text), so they are committed with the prompt.
    """
    return prompt_commitment_bytes(value if not stop else {"input": value, "stop": list(stop)})


def parse_commitment_input(data: bytes) -> tuple[ModelInput, tuple[str, ...]]:
    """The inverse of :func:`commitment_input`; ``input.malformed`` for anything it would not
    have produced, byte for byte (replay must run exactly what was committed)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InputError("input.malformed", "the prompt is not the committed JSON") from exc
    stop: tuple[str, ...] = ()
    if isinstance(value, dict):
        if set(value) != {"input", "stop"} or not isinstance(value["stop"], list) \
                or not all(isinstance(s, str) for s in value["stop"]) or not value["stop"]:
            raise InputError("input.malformed", "the prompt is not the committed JSON")
        stop, value = tuple(value["stop"]), value["input"]
    if isinstance(value, list):
        if not value or not all(
                isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in _ROLES
                and isinstance(m["content"], str) for m in value):
            raise InputError("input.malformed", "the prompt's messages are not as committed")
    elif not isinstance(value, str):
        raise InputError("input.malformed", "the prompt is not the committed JSON")
    if commitment_input(value, stop) != data:
        raise InputError("input.malformed", "the prompt is not in its committed (canonical) form")
    return value, stop


# --- answers --------------------------------------------------------------------------------


def usage(completion_tokens: int, prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_answer(rid: str, created: int, model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                     "logprobs": None, "finish_reason": c.finish_reason}],
        "usage": usage(c.completion_tokens, c.prompt_tokens),
    }


def completion_answer(rid: str, created: int, model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": c.text, "logprobs": None,
                     "finish_reason": c.finish_reason}],
        "usage": usage(c.completion_tokens, c.prompt_tokens),
    }


def models_answer(model: str, created: int, digest: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created,
                                        "owned_by": "medclave", "medclave_model_digest": digest}]}


def sse(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class ChunkShaper:
    """Server-sent events in OpenAI's chunk shapes for one streamed answer."""

    def __init__(self, chat: bool, rid: str, created: int, model: str,
                 include_usage: bool) -> None:
        self._chat = chat
        self._id = f"chatcmpl-{rid}" if chat else f"cmpl-{rid}"
        self._object = "chat.completion.chunk" if chat else "text_completion"
        self._created = created
        self._model = model
        self._usage = include_usage

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse({"id": self._id, "object": self._object, "created": self._created,
                    "model": self._model, "choices": choices, **extra})

    def first(self) -> bytes:
        if not self._chat:
            return b""
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])

    def delta(self, d: Delta) -> bytes:
        if self._chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": d.text} if d.text else {},
                                      "logprobs": None, "finish_reason": d.finish_reason}
        else:
            choice = {"index": 0, "text": d.text, "logprobs": None,
                      "finish_reason": d.finish_reason}
        out = self._event([choice])
        if d.final and self._usage:
            out += self._event([], usage=usage(d.completion_tokens, d.prompt_tokens))
        return out

    @staticmethod
    def error(code: str, message: str) -> bytes:
        return sse({"error": {"message": message, "type": "server_error", "code": code}})

    @staticmethod
    def done() -> bytes:
        return sse("[DONE]")
