"""The OpenAI-compatible API's answers: whole, as server-sent chunks, and its errors' codes.

Shapes follow OpenAI's (``openai`` parses them into its types): a chat choice's ``message`` with
``content`` and ``tool_calls`` (``content`` null when the answer is a call), ``logprobs`` as
``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`` for chat and as
``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` for the legacy completions API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from medclave.enclave.engines.base import Choice, Completion, Delta, TokenLogprob, ToolCallDelta


def usage(completion_tokens: int, prompt_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def tool_call_id(rid: str, choice: int, index: int) -> str:
    """A call's id: the enclave's (the model names no id), unique per request."""
    return f"call_{rid}_{choice}_{index}"


def chat_logprobs(entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {"content": [
        {"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes),
         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
                          for t in e.top]} for e in entries], "refusal": None}


def completion_logprobs(entries: Sequence[TokenLogprob] | None, offset: int = 0
                        ) -> dict[str, Any] | None:
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
            "text_offset": offsets}


def _message(rid: str, index: int, c: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if c.tool_calls and not c.text else c.text}
    if c.tool_calls:
        message["tool_calls"] = [
            {"id": tool_call_id(rid, index, k), "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for k, call in enumerate(c.tool_calls)]
    return message


def chat_answer(rid: str, created: int, model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": _message(rid, i, choice),
                     "logprobs": chat_logprobs(choice.logprobs),
                     "finish_reason": choice.finish_reason}
                    for i, choice in enumerate(c.all_choices)],
        "usage": usage(c.completion_tokens, c.prompt_tokens),
    }


def completion_answer(rid: str, created: int, model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": f"cmpl-{rid}", "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": choice.text,
                     "logprobs": completion_logprobs(choice.logprobs),
                     "finish_reason": choice.finish_reason}
                    for i, choice in enumerate(c.all_choices)],
        "usage": usage(c.completion_tokens, c.prompt_tokens),
    }


def model_answer(model: str, created: int, digest: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "medclave",
            "medclave_model_digest": digest}


def models_answer(model: str, created: int, digest: str) -> dict[str, Any]:
    return {"object": "list", "data": [model_answer(model, created, digest)]}


def sse(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class ChunkShaper:
    """Server-sent events in OpenAI's chunk shapes for one streamed answer (one choice)."""

    def __init__(self, chat: bool, rid: str, created: int, model: str,
                 include_usage: bool) -> None:
        self._chat = chat
        self._rid = rid
        self._id = f"chatcmpl-{rid}" if chat else f"cmpl-{rid}"
        self._object = "chat.completion.chunk" if chat else "text_completion"
        self._created = created
        self._model = model
        self._usage = include_usage
        self._offset = 0  # characters sent so far (the completions API's text_offset)

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
            delta: dict[str, Any] = {"content": d.text} if d.text else {}
            if d.tool_call is not None:
                delta["tool_calls"] = [self._call(d.tool_call)]
            choice: dict[str, Any] = {"index": 0, "delta": delta,
                                      "logprobs": chat_logprobs(d.logprobs or None),
                                      "finish_reason": d.finish_reason}
        else:
            choice = {"index": 0, "text": d.text,
                      "logprobs": completion_logprobs(d.logprobs or None, self._offset),
                      "finish_reason": d.finish_reason}
        self._offset += len(d.text)
        out = self._event([choice])
        if d.final and self._usage:
            out += self._event([], usage=usage(d.completion_tokens, d.prompt_tokens))
        return out

    def _call(self, call: ToolCallDelta) -> dict[str, Any]:
        if call.name is None:
            return {"index": call.index, "function": {"arguments": call.arguments}}
        return {"index": call.index, "id": tool_call_id(self._rid, 0, call.index),
                "type": "function", "function": {"name": call.name,
                                                 "arguments": call.arguments}}

    @staticmethod
    def error(code: str, message: str) -> bytes:
        return sse({"error": {"message": message, "type": "server_error", "param": None,
                              "code": code}})

    @staticmethod
    def done() -> bytes:
        return sse("[DONE]")
