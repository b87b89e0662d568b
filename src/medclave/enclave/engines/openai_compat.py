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

The engine sits inside the TEE boundary, so its address must be too: ``engine_url`` is a
loopback IP literal (``http://127.0.0.1:8000``, ``http://[::1]:8000``) or a Unix socket
(``unix:///run/vllm.sock``), anything else refused with ``config.engine_not_local``. A host
name, even ``localhost``, is refused: resolving it goes through files and resolvers the
enclave does not measure. Environment proxies (``HTTP_PROXY``, ``ALL_PROXY``) are ignored, so
the operator cannot route prompts out through one, and redirects are not followed.

Which model the server serves is checked at boot (:meth:`OpenAICompatEngine.check_served`):
it must serve exactly the measured model id, and where it names the weights it loaded (vLLM's
``root``), they must be the very file or folder whose digest the enclave computed and attests
(docs/engines.md says what this does and does not prove).

An unreachable server is ``enclave.engine_unavailable`` (503): at boot the enclave does not
start, later a request is answered with it. A whole answer whose client left is given up
(:class:`~.base.GenerationCancelled`, recorded as ``client_gone``); a stream whose client left
closes its connection, which vLLM takes as the request's abort.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from medclave.enclave.engines.base import (
    ChatMessage,
    Choice,
    Completion,
    Delta,
    GenerationCancelled,
    SamplingParams,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    current_generation,
    one_choice,
    run_streaming,
)
from medclave.errors import EnclaveError, InputError, ModelError

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_SSE_LINE = 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
MAX_MODELS = 64  # entries of GET /v1/models read (a server serving more is not ours)
UNIX_SCHEME = "unix://"
# Requests over a Unix socket still need an HTTP URL; the host part is never resolved.
_UDS_BASE = "http://engine.local"


def engine_address(url: str) -> tuple[str, str | None]:
    """``(base URL, Unix socket path or None)`` of ``engine_url``; ``config.engine_not_local``
    unless it is a loopback IP literal or a Unix socket (see the module)."""
    if url.startswith(UNIX_SCHEME):
        path = url[len(UNIX_SCHEME):]
        if not path.startswith("/") or "\x00" in path or len(path) > 107:  # sun_path is 108
            raise InputError("config.engine_not_local",
                             "a Unix socket engine_url is unix:///absolute/path")
        return _UDS_BASE, path
    try:
        parsed = httpx.URL(url)
        address = ipaddress.ip_address(parsed.host)
    except (httpx.InvalidURL, ValueError) as exc:
        raise InputError("config.engine_not_local", "engine_url must be a loopback IP address "
                         "(127.0.0.1, [::1]) or unix:///path, not a host name") from exc
    if parsed.scheme not in ("http", "https") or not address.is_loopback or parsed.userinfo \
            or parsed.query or parsed.fragment:
        # A remote engine would see prompts outside the attested VM.
        raise InputError("config.engine_not_local", "the engine must listen inside this VM, "
                         "on a loopback address or a Unix socket")
    return str(parsed.copy_with(path=parsed.path.rstrip("/") or "")).rstrip("/"), None


def _unavailable(exc: BaseException) -> EnclaveError:
    return EnclaveError("enclave.engine_unavailable", f"engine unreachable: {type(exc).__name__}")


def open_engine(base_url: str, *, model: str, build_id: str | None, model_path: str | None
                ) -> OpenAICompatEngine:
    """The engine at ``base_url``, once it is known to serve the measured model."""
    engine = OpenAICompatEngine(base_url, model=model, build_id=build_id)
    try:
        engine.check_served(model_path)
    except BaseException:
        engine.close()
        raise
    return engine


class OpenAICompatEngine:
    name = "openai-compatible"

    def __init__(self, base_url: str, *, model: str, build_id: str | None = None,
                 api_key: str | None = None, timeout: float = 300.0,
                 http: httpx.Client | None = None) -> None:
        base, socket_path = engine_address(base_url)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # trust_env=False: no HTTP(S)_PROXY/ALL_PROXY from the environment, no .netrc.
        transport = httpx.HTTPTransport(uds=socket_path) if socket_path else None
        self._http = http or httpx.Client(base_url=base, timeout=timeout, headers=headers,
                                          transport=transport, trust_env=False,
                                          follow_redirects=False)
        self._model = model
        self.build_id = build_id or self._read_build()

    def check_served(self, model_path: str | None = None) -> None:
        """At boot: the server serves exactly ``model`` (the measured model's id), and where it
        names what it loaded (vLLM's ``root``), that is ``model_path``, the file or folder the
        enclave hashed; ``model.engine_mismatch`` otherwise."""
        out = self._get_json("/v1/models")
        data = out.get("data")
        if (not isinstance(data, list) or len(data) > MAX_MODELS
                or not all(isinstance(e, dict) for e in data)):
            raise EnclaveError("enclave.engine_failed", "the engine's model list is malformed")
        ids = [e.get("id") for e in data]
        if ids != [self._model]:
            shown = ", ".join(repr(str(i)[:128]) for i in ids[:8]) or "none"
            raise ModelError("model.engine_mismatch", f"the engine serves {shown}; the "
                             f"measured model is {self._model!r}, and only it may be served")
        root = data[0].get("root")
        if root is None:
            return
        if model_path is None or not isinstance(root, str) or not _same_file(root, model_path):
            raise ModelError("model.engine_mismatch", "the engine loaded its weights from "
                             f"{str(root)[:256]!r}, not from the file the enclave hashed")

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with self._http.stream("GET", path) as response:
                return response.status_code, _read_bounded(response, MAX_ERROR_BYTES
                                                           if response.status_code != 200
                                                           else MAX_RESPONSE_BYTES,
                                                           truncate=response.status_code != 200)
        except httpx.TransportError as exc:
            raise _unavailable(exc) from exc
        except httpx.HTTPError as exc:
            raise EnclaveError("enclave.engine_failed", f"engine: {type(exc).__name__}") from exc

    def _get_json(self, path: str) -> dict[str, Any]:
        status, content = self._get(path)
        if status != 200:
            raise EnclaveError("enclave.engine_failed", f"engine answered {status} to {path}")
        return _object(content)

    def _read_build(self) -> str:
        status, content = self._get("/version")
        version = _object(content).get("version") if status == 200 else None
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
        """A whole answer. Inside a generation whose client may leave, the call waits on a
        thread of its own while this one watches the generation's Cancel: a client that left
        is given up at once (the server's generation then runs to its ``max_tokens``)."""
        generation = current_generation()
        if generation is None:
            return self._post_now(path, body)
        done = threading.Event()
        result: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        def call() -> None:
            try:
                result.append(self._post_now(path, body))
            except BaseException as exc:  # handed to the caller
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name="medclave-engine-call", daemon=True).start()
        generation.cancel.on_set(done.set)
        done.wait()
        if failure:
            raise failure[0]
        if not result:  # woken by the Cancel: the client left
            generation.stopped = True
            raise GenerationCancelled
        return result[0]

    def _post_now(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                status = response.status_code
                limit = MAX_RESPONSE_BYTES if status == 200 else MAX_ERROR_BYTES
                content = _read_bounded(response, limit, truncate=status != 200)
        except httpx.TransportError as exc:
            raise _unavailable(exc) if _never_sent(exc) else EnclaveError(
                "enclave.engine_failed", f"engine: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise EnclaveError("enclave.engine_failed", f"engine: {type(exc).__name__}") from exc
        if status != 200:
            raise _refusal(status, content, path)
        return _object(content)

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
        except httpx.TransportError as exc:
            raise _unavailable(exc) if _never_sent(exc) else EnclaveError(
                "enclave.engine_failed", f"engine: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise EnclaveError("enclave.engine_failed", f"engine: {type(exc).__name__}") from exc
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
                raise EnclaveError("enclave.engine_failed",
                                   f"engine stream: {type(exc).__name__}") from exc
            finally:
                response.close()
            emit(Delta("", finish or "stop", int(usage.get("prompt_tokens", 0)),
                       int(usage.get("completion_tokens", count))))
        return run_streaming(produce)

    def close(self) -> None:
        self._http.close()


def _never_sent(exc: httpx.TransportError) -> bool:
    """The server was never reached (nothing listens, the socket is gone): unavailable, and
    the prompt did not leave."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _read_bounded(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The body, at most ``limit`` bytes: past it ``enclave.engine_failed`` (or, ``truncate``,
    the first ``limit`` bytes; an error answer is only read for its message)."""
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                parts.append(chunk[:limit - size + len(chunk)])
                break
            raise EnclaveError("enclave.engine_failed", "engine answer too large")
        parts.append(chunk)
    return b"".join(parts)


def _object(content: bytes) -> dict[str, Any]:
    try:
        out = json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise EnclaveError("enclave.engine_failed", "engine answered non-JSON") from exc
    if not isinstance(out, dict):
        raise EnclaveError("enclave.engine_failed", "engine answered a non-object")
    return out


def _same_file(served: str, hashed: str) -> bool:
    """Whether the path the server names is the file or folder the enclave hashed (both
    resolved: links followed; a name that is no local path, a hub repository, is not)."""
    try:
        return os.path.samefile(Path(served), Path(hashed))
    except OSError:
        return False


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
