"""An OpenAI-compatible server as the engine: vLLM on a confidential GPU VM.

The server runs inside the same confidential VM as the enclave server, listening on loopback
only, so requests to it never leave the attested boundary; the enclave keeps every other duty
(attestation, decryption, authorization, audit). Its build goes into the attestation:
``vllm/VERSION`` read from ``GET /version`` (vLLM's endpoint) unless given explicitly.

Every parameter the enclave accepted is passed on (tools, ``tool_choice``, ``response_format``,
``logprobs``, ``n``, ``logit_bias``, the penalties), so the server does what it supports and
refuses the rest: its 4xx answers reach the caller as ``enclave.bad_request`` (or
``enclave.context_length_exceeded``) with its message, also for a stream, whose upstream answer
is opened before the stream starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from medclave.enclave.engines.base import (
    ChatMessage,
    Choice,
    Completion,
    Delta,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    one_choice,
    run_streaming,
)
from medclave.errors import EnclaveError, InputError

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_SSE_LINE = 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class OpenAICompatEngine:
    name = "openai-compatible"

    def __init__(self, base_url: str, *, model: str, build_id: str | None = None,
                 api_key: str | None = None, timeout: float = 300.0,
                 http: httpx.Client | None = None, allow_remote: bool = False) -> None:
        host = urlsplit(base_url).hostname or ""
        if host not in _LOOPBACK and not allow_remote:
            # A remote engine would see prompts outside the attested VM.
            raise InputError("config.invalid", "the engine server must listen on loopback")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                          headers=headers)
        self._model = model
        self.build_id = build_id or self._read_build()

    def _read_build(self) -> str:
        try:
            response = self._http.get("/version")
            version = response.json().get("version") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise EnclaveError("enclave.engine_failed", f"engine unreachable: {exc!r}") from exc
        if not isinstance(version, str) or not version or len(version) > 64:
            raise EnclaveError("enclave.engine_failed",
                               "the engine reports no version; give its build explicitly")
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in version)
        return f"vllm/{safe}"

    def _body(self, params: SamplingParams, *, chat: bool, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(_options(params, chat=chat))
        body.update(extra)
        return body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EnclaveError("enclave.engine_failed", f"engine unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise _refusal(response.status_code, response.content[:MAX_ERROR_BYTES], path)
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise EnclaveError("enclave.engine_failed", "engine answer too large")
        try:
            out = response.json()
        except ValueError as exc:
            raise EnclaveError("enclave.engine_failed", "engine answered non-JSON") from exc
        if not isinstance(out, dict):
            raise EnclaveError("enclave.engine_failed", "engine answered a non-object")
        return out

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        out = self._post("/v1/chat/completions",
                         self._body(params, chat=True, messages=[dict(m) for m in messages]))
        return _completion(out, chat=True)

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        out = self._post("/v1/completions", self._body(params, chat=False, prompt=prompt))
        return _completion(out, chat=False)

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        one_choice(params)
        body = self._body(params, chat=True, messages=[dict(m) for m in messages], stream=True,
                          stream_options={"include_usage": True})
        return self._stream("/v1/chat/completions", body, chat=True)

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        one_choice(params)
        body = self._body(params, chat=False, prompt=prompt, stream=True,
                          stream_options={"include_usage": True})
        return self._stream("/v1/completions", body, chat=False)

    def _stream(self, path: str, body: dict[str, Any], *, chat: bool) -> Iterator[Delta]:
        # Opened here, on the caller's thread: a refusal is an error answer, not a failed stream.
        try:
            response = self._http.send(self._http.build_request("POST", path, json=body),
                                       stream=True)
        except httpx.HTTPError as exc:
            raise EnclaveError("enclave.engine_failed", f"engine unreachable: {exc!r}") from exc
        if response.status_code != 200:
            try:
                content = next(response.iter_bytes(MAX_ERROR_BYTES), b"")
            except httpx.HTTPError:
                content = b""
            finally:
                response.close()
            raise _refusal(response.status_code, content, path)

        def produce(emit: Callable[[Delta], bool]) -> None:
            finish: str | None = None
            usage: dict[str, Any] = {}
            count = 0
            try:
                for event in _sse_events(response.iter_lines()):
                    if isinstance(event.get("usage"), dict):
                        usage = event["usage"]
                    for choice in event.get("choices") or ():
                        if not isinstance(choice, dict):
                            continue
                        for delta in _deltas(choice, chat=chat):
                            count += 1
                            if not emit(delta):
                                return
                        finish = choice.get("finish_reason") or finish
            except httpx.HTTPError as exc:
                raise EnclaveError("enclave.engine_failed", f"engine stream: {exc!r}") from exc
            finally:
                response.close()
            emit(Delta("", finish or "stop", int(usage.get("prompt_tokens", 0)),
                       int(usage.get("completion_tokens", count))))
        return run_streaming(produce)

    def close(self) -> None:
        self._http.close()


def _options(p: SamplingParams, *, chat: bool) -> dict[str, Any]:
    """The parameters beyond sampling, in OpenAI's words; only those that are set."""
    out: dict[str, Any] = {}
    if p.n != 1:
        out["n"] = p.n
    if p.presence_penalty:
        out["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        out["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        out["logit_bias"] = {str(token): bias for token, bias in p.logit_bias}
    if p.logprobs is not None:
        out.update({"logprobs": True, "top_logprobs": p.logprobs} if chat else
                   {"logprobs": p.logprobs})
    if p.tools:
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description,
            "parameters": json.loads(t.parameters)}} for t in p.tools]
        out["tool_choice"] = ({"type": "function", "function": {"name": p.tool_name}}
                              if p.tool_name else p.tool_choice)
    if p.response_format is not None:
        fmt = p.response_format
        out["response_format"] = {"type": "json_object"} if fmt.schema is None else {
            "type": "json_schema", "json_schema": {"name": fmt.name or "response",
                                                   "schema": json.loads(fmt.schema),
                                                   "strict": True}}
    return out


def _refusal(status: int, content: bytes, path: str) -> EnclaveError:
    """The server's answer other than 200: its 4xx refusals are the caller's to read."""
    if not 400 <= status < 500 or status in (401, 403, 408, 429):
        return EnclaveError("enclave.engine_failed", f"engine answered {status}")
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    message = message[:1000] or f"the engine refused the request ({status})"
    code = error.get("code") if isinstance(error, dict) else None
    param = "messages" if path.endswith("chat/completions") else "prompt"
    if code == "context_length_exceeded" or "maximum context length" in message.lower():
        return EnclaveError("enclave.context_length_exceeded", message, param=param)
    return EnclaveError("enclave.bad_request", f"the engine refused the request: {message}")


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """``data:`` events of a server-sent event stream, up to ``[DONE]``."""
    for line in lines:
        if len(line) > MAX_SSE_LINE:
            raise EnclaveError("enclave.engine_failed", "engine event too large")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise EnclaveError("enclave.engine_failed", "engine event is not JSON") from exc
        if isinstance(event, dict):
            yield event


def _deltas(choice: dict[str, Any], *, chat: bool) -> Iterator[Delta]:
    """One streamed choice's pieces: text (with its log-probabilities), tool call pieces."""
    if choice.get("index", 0) != 0:
        raise EnclaveError("enclave.engine_failed", "the engine streamed a second choice")
    if not chat:
        text = choice.get("text")
        logprobs = _logprobs(choice.get("logprobs"), chat=False)
        if isinstance(text, str) and (text or logprobs):
            yield Delta(text, logprobs=logprobs or ())
        return
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    assert isinstance(delta, dict)
    text = delta.get("content")
    logprobs = _logprobs(choice.get("logprobs"), chat=True)
    if isinstance(text, str) and (text or logprobs):
        yield Delta(text, logprobs=logprobs or ())
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("index", 0), int):
            raise EnclaveError("enclave.engine_failed", "the engine streamed a malformed call")
        name = function.get("name")
        yield Delta("", tool_call=ToolCallDelta(int(call.get("index", 0)),
                                                str(function.get("arguments") or ""),
                                                name if isinstance(name, str) else None))


def _completion(out: dict[str, Any], *, chat: bool) -> Completion:
    raw = out.get("choices")
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise EnclaveError("enclave.engine_failed", "engine answer has no choice")
    choices = tuple(_choice(c, chat=chat) for c in sorted(raw, key=lambda c: c.get("index", 0)))
    usage = out.get("usage") if isinstance(out.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return Completion(choices[0].text, choices[0].finish_reason,
                      int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                      choices)


def _choice(c: dict[str, Any], *, chat: bool) -> Choice:
    finish = str(c.get("finish_reason") or "stop")
    logprobs = _logprobs(c.get("logprobs"), chat=chat)
    if not chat:
        return Choice(str(c.get("text") or ""), finish, (), logprobs)
    message = c.get("message") if isinstance(c.get("message"), dict) else {}
    assert isinstance(message, dict)
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise EnclaveError("enclave.engine_failed", "the engine answered a malformed call")
        calls.append(ToolCall(function["name"], str(function.get("arguments") or "")))
    return Choice(str(message.get("content") or ""), finish, tuple(calls), logprobs)


def _logprobs(value: Any, *, chat: bool) -> tuple[TokenLogprob, ...] | None:
    """OpenAI's log-probabilities (chat's or the completions API's) as the engine's."""
    if value is None:
        return None
    try:
        if chat:
            return tuple(_entry(e["token"], e["logprob"], e.get("bytes"), [
                (t["token"], t["logprob"], t.get("bytes")) for t in e.get("top_logprobs") or ()])
                for e in value.get("content") or ())
        tops = value.get("top_logprobs") or [None] * len(value["tokens"])
        return tuple(_entry(token, logprob, None, [(k, v, None) for k, v in (top or {}).items()])
                     for token, logprob, top in zip(value["tokens"], value["token_logprobs"],
                                                    tops, strict=True))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EnclaveError("enclave.engine_failed", "the engine answered malformed logprobs"
                           ) from exc


def _entry(token: Any, logprob: Any, raw: Any, top: list[tuple[Any, Any, Any]]) -> TokenLogprob:
    def data(text: Any, given: Any) -> tuple[int, ...]:
        return tuple(int(b) for b in given) if given is not None else tuple(str(text).encode())

    return TokenLogprob(str(token), data(token, raw), float(logprob or 0.0),
                        tuple(TopLogprob(str(t), data(t, b), float(lp)) for t, lp, b in top))
