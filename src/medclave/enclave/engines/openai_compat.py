"""An OpenAI-compatible server as the engine: vLLM on a confidential GPU VM.

The server runs inside the same confidential VM as the enclave server, listening on loopback
only, so requests to it never leave the attested boundary; the enclave keeps every other duty
(attestation, decryption, authorization, audit). Its build goes into the attestation:
``vllm/VERSION`` read from ``GET /version`` (vLLM's endpoint) unless given explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from medclave.enclave.engines.base import (
    ChatMessage,
    Completion,
    Delta,
    SamplingParams,
    run_streaming,
)
from medclave.errors import EnclaveError, InputError

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_SSE_LINE = 1024 * 1024
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

    def _body(self, params: SamplingParams, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(extra)
        return body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EnclaveError("enclave.engine_failed", f"engine unreachable: {exc!r}") from exc
        if response.status_code != 200 or len(response.content) > MAX_RESPONSE_BYTES:
            raise EnclaveError("enclave.engine_failed", f"engine answered {response.status_code}")
        try:
            out = response.json()
        except ValueError as exc:
            raise EnclaveError("enclave.engine_failed", "engine answered non-JSON") from exc
        if not isinstance(out, dict):
            raise EnclaveError("enclave.engine_failed", "engine answered a non-object")
        return out

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        out = self._post("/v1/chat/completions",
                         self._body(params, messages=[dict(m) for m in messages]))
        return _completion(out, lambda c: (c.get("message") or {}).get("content") or "")

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        out = self._post("/v1/completions", self._body(params, prompt=prompt))
        return _completion(out, lambda c: c.get("text") or "")

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        body = self._body(params, messages=[dict(m) for m in messages], stream=True,
                          stream_options={"include_usage": True})
        return self._stream("/v1/chat/completions", body,
                            lambda c: (c.get("delta") or {}).get("content") or "")

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        body = self._body(params, prompt=prompt, stream=True,
                          stream_options={"include_usage": True})
        return self._stream("/v1/completions", body, lambda c: c.get("text") or "")

    def _stream(self, path: str, body: dict[str, Any],
                text_of: Callable[[dict[str, Any]], str]) -> Iterator[Delta]:
        def produce(emit: Callable[[Delta], bool]) -> None:
            finish: str | None = None
            usage: dict[str, Any] = {}
            count = 0
            try:
                with self._http.stream("POST", path, json=body) as response:
                    if response.status_code != 200:
                        raise EnclaveError("enclave.engine_failed",
                                           f"engine answered {response.status_code}")
                    for event in _sse_events(response.iter_lines()):
                        if event.get("usage"):
                            usage = event["usage"]
                        for choice in event.get("choices") or ():
                            text = text_of(choice)
                            if text:
                                count += 1
                                if not emit(Delta(text)):
                                    return
                            finish = choice.get("finish_reason") or finish
            except httpx.HTTPError as exc:
                raise EnclaveError("enclave.engine_failed", f"engine stream: {exc!r}") from exc
            emit(Delta("", finish or "stop", int(usage.get("prompt_tokens", 0)),
                       int(usage.get("completion_tokens", count))))
        return run_streaming(produce)

    def close(self) -> None:
        self._http.close()


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


def _completion(out: dict[str, Any], text_of: Callable[[dict[str, Any]], str]) -> Completion:
    choices = out.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EnclaveError("enclave.engine_failed", "engine answer has no choice")
    usage = out.get("usage") if isinstance(out.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    return Completion(text=text_of(choices[0]),
                      finish_reason=choices[0].get("finish_reason") or "stop",
                      prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      completion_tokens=int(usage.get("completion_tokens", 0)))
