"""The SDK: the shape of the ``openai`` package, over an attested, encrypted channel.

    client = MedclaveClient("https://enclave.example", policy="policy.toml", api_key=token)
    answer = client.chat.completions.create(model="smollm2-135m-instruct",
                                            messages=[{"role": "user", "content": "..."}])

Answers are the ``openai`` package's own types (``ChatCompletion``, ``ChatCompletionChunk``,
``Completion``), so code written for it keeps working. Before the first prompt leaves, the
enclave's attestation is verified against ``policy``; a refusal raises ``attestation.*`` or
``policy.*`` and nothing is sent. Each answer's audit receipt is verified with the key the
attestation bound and is available as ``client.last_receipt``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from medclave.attestation import AppraisalPolicy, load_policy
from medclave.audit.receipt import VerifiedReceipt
from medclave.client.conversations import Conversations
from medclave.client.session import EnclaveSession, InnerResponse, StreamedResponse, error_from_body
from medclave.client.verify import VerifiedEnclave
from medclave.errors import ClientError
from medclave.protocol import inference as proto
from medclave.util.clock import Clock, system_clock

_OMIT = {"self", "extra_body"}


def _body(params: dict[str, Any]) -> bytes:
    body = {k: v for k, v in params.items() if v is not None and k not in _OMIT}
    body.update(params.get("extra_body") or {})
    return json.dumps(body).encode()


def _check(answer: InnerResponse) -> dict[str, Any]:
    if answer.status != 200:
        raise error_from_body(answer.status, answer.body)
    try:
        value = json.loads(answer.body)
    except (ValueError, RecursionError) as exc:
        raise ClientError("client.upstream_failed", "the enclave answered non-JSON") from exc
    if not isinstance(value, dict):
        raise ClientError("client.upstream_failed", "the enclave answered a non-object")
    return value


def _events(stream: StreamedResponse) -> Iterator[dict[str, Any]]:
    """``data:`` events of the decrypted server-sent event stream."""
    buffer = b""
    for piece in stream.iter_content():
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    value = json.loads(data)
                except (ValueError, RecursionError) as exc:
                    raise ClientError("client.upstream_failed",
                                      "the enclave streamed an event that is not JSON") from exc
                if isinstance(value, dict) and "error" in value and "choices" not in value:
                    raise error_from_body(500, data)
                if isinstance(value, dict):
                    yield value


class _ChatCompletions:
    def __init__(self, client: MedclaveClient) -> None:
        self._client = client

    def create(self, *, messages: Iterable[dict[str, Any]], model: str | None = None,
               stream: bool = False, **params: Any) -> Any:
        """``ChatCompletion``, or an iterator of ``ChatCompletionChunk`` with ``stream=True``."""
        body = _body({**params, "model": model, "messages": list(messages),
                      "stream": stream or None})
        if stream:
            return self._client._stream(proto.CHAT_PATH, body, ChatCompletionChunk)
        return ChatCompletion.model_validate(self._client._post(proto.CHAT_PATH, body))


class _Chat:
    def __init__(self, client: MedclaveClient) -> None:
        self.completions = _ChatCompletions(client)


class _Completions:
    def __init__(self, client: MedclaveClient) -> None:
        self._client = client

    def create(self, *, prompt: str, model: str | None = None, stream: bool = False,
               **params: Any) -> Any:
        body = _body({**params, "model": model, "prompt": prompt, "stream": stream or None})
        if stream:
            return self._client._stream(proto.COMPLETIONS_PATH, body, Completion)
        return Completion.model_validate(self._client._post(proto.COMPLETIONS_PATH, body))


class _Models:
    def __init__(self, client: MedclaveClient) -> None:
        self._client = client

    def list(self) -> list[Model]:
        answer = _check(self._client.session.request(
            "GET", proto.MODELS_PATH, authorization=self._client.authorization()))
        return [Model.model_validate(m) for m in answer.get("data") or []]

    def retrieve(self, model: str) -> Model:
        """One model; ``enclave.model_not_found`` for a model the enclave does not serve."""
        return Model.model_validate(_check(self._client.session.request(
            "GET", proto.model_path(model), authorization=self._client.authorization())))


class MedclaveClient:
    """``MedclaveClient(url, policy=..., api_key=...)``; ``api_key`` is a token or a function
    returning a fresh one; ``sim_roots`` to accept sim (never in production: it protects
    nothing)."""

    def __init__(self, url: str, *, policy: AppraisalPolicy | str | Path,
                 api_key: str | Callable[[], str] | None = None, sim_roots: Iterable[str] = (),
                 trusted_roots: frozenset[str] | None = None,
                 reattest_after: timedelta = timedelta(minutes=5),
                 clock: Clock = system_clock, timeout: float = 300.0,
                 http: httpx.Client | None = None) -> None:
        appraisal = policy if isinstance(policy, AppraisalPolicy) else load_policy(Path(policy))
        self.session = EnclaveSession(url, appraisal, sim_roots=frozenset(sim_roots),
                                      trusted_roots=trusted_roots, reattest_after=reattest_after,
                                      clock=clock, timeout=timeout, http=http)
        self.api_key = api_key
        self.last_receipt: VerifiedReceipt | None = None
        self.chat = _Chat(self)
        self.completions = _Completions(self)
        self.models = _Models(self)
        self.conversations = Conversations(self)  # sealed conversations (docs/triage.md)

    @property
    def attestation(self) -> VerifiedEnclave:
        """The verified attestation (attesting now if none yet)."""
        return self.session.enclave or self.session.attest()

    def authorization(self) -> str | None:
        """``Bearer`` + the token; a callable ``api_key`` is asked for one per request (access
        tokens live at most 15 minutes: a callable can hand out a refreshed one)."""
        token = self.api_key() if callable(self.api_key) else self.api_key
        return f"Bearer {token}" if token else None

    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        answer = self.session.request("POST", path, body=body,
                                      authorization=self.authorization())
        value = _check(answer)
        self.last_receipt = answer.receipt
        return value

    def _stream(self, path: str, body: bytes, kind: type[Any]) -> Iterator[Any]:
        stream = self.session.stream("POST", path, body=body, authorization=self.authorization())
        if stream.status != 200:
            content = b"".join(stream.iter_content())
            raise error_from_body(stream.status, content)

        def chunks() -> Iterator[Any]:
            for event in _events(stream):
                yield kind.model_validate(event)
            self.last_receipt = stream.receipt
        return chunks()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> MedclaveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
