"""The proxy's routes: each OpenAI-compatible request translated into one encapsulated request
to the attested enclave (:mod:`medclave.client.proxy` builds the app around them).

A route only reads the body (bounded), asks :class:`~medclave.client.callers.Callers` for the
credential and admission for its verdict, and hands the request to the session; the answer comes
back whole or streamed, with only the headers an app may see.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from medclave.client.admission import ProxyAdmission
from medclave.client.callers import Callers, Upstream
from medclave.client.replicas import Enclaves, ReplicaSet
from medclave.client.session import Abort, InnerResponse, StreamedResponse, summary
from medclave.crypto.canonical import load_json
from medclave.errors import ClientError, InputError
from medclave.protocol import inference as proto
from medclave.serving import (
    ClosingStreamingResponse,
    StreamEnd,
    read_limited_body,
    run_sync_until_gone,
)

MAX_BODY = proto.MAX_INNER_BODY
_PASS_HEADERS = ("content-type", proto.REQUEST_ID_HEADER, proto.RECEIPT_HEADER, "retry-after",
                 "www-authenticate")
# The end of an OpenAI event stream: chat and completions, or the Responses API's last events.
_LAST_EVENTS = (b"data: [DONE]", b"event: response.completed", b"event: response.incomplete",
                b"event: response.failed")
PEER = "medclave.peer"  # the ASGI scope key holding the TCP peer (see proxy._RecordPeer)
# RFC 6750 §3: the scheme a client may retry with (an OpenAI app sends Bearer).
CHALLENGE = 'Bearer realm="medclave"'


router = APIRouter()


def get_session(request: Request) -> Enclaves:
    session: Enclaves = request.app.state.session
    return session


SessionDep = Annotated[Enclaves, Depends(get_session)]


async def read_body(request: Request) -> bytes:
    return await read_limited_body(request, MAX_BODY)


BodyDep = Annotated[bytes, Depends(read_body)]


async def read_audio_body(request: Request) -> bytes:
    return await read_limited_body(request, proto.MAX_AUDIO_BODY)


AudioBodyDep = Annotated[bytes, Depends(read_audio_body)]


class Slots:
    """At most ``limit`` requests in flight (a stream holds its slot until it ends)."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self._free <= 0:
                raise ClientError("client.busy", "too many requests in flight", retry_after=1)
            self._free -= 1

    def give(self) -> None:
        with self._lock:
            self._free += 1


def _wants_stream(body: bytes) -> bool:
    """Whether the request asks for a stream; ``input.malformed`` when the body is not JSON."""
    value = load_json(body, what="the request body")
    return isinstance(value, dict) and value.get("stream") is True


async def _upstream(request: Request, method: str, path: str, body: bytes = b"") -> Upstream:
    """The credential for the enclave, then coarse admission of it, before the session attests
    or encrypts anything. In a thread: the IdP or a JWKS may be asked."""
    callers: Callers = request.app.state.callers
    upstream = await run_in_threadpool(callers.upstream, request.headers,
                                       peer=request.scope.get(PEER), method=method,
                                       url=str(request.url), path=path)
    admission: ProxyAdmission | None = request.app.state.admission
    if admission is not None:
        await run_in_threadpool(admission.admit, upstream.headers(), method=method, path=path,
                                body=body)
    return upstream


def _drop(stream: StreamedResponse, content: Iterator[bytes], how: StreamEnd) -> None:
    """The app's response is over: an upstream stream it did not read to the end is shut down at
    once, so the enclave sees the client leave (it records the answer and stops the engine)."""
    if how != "ended":
        stream.abort()
    close = getattr(content, "close", None)
    if close is not None:
        # A generator another thread is inside cannot be closed here (ValueError): its read
        # fails on the shut-down connection and it closes itself.
        with contextlib.suppress(ValueError):
            close()


def _answer_headers(pairs: Any, status: int, replica: str | None = None) -> dict[str, str]:
    headers = {k: v for k, v in pairs if k in _PASS_HEADERS and k != "content-type"}
    if replica is not None:
        headers[proto.REPLICA_HEADER] = replica  # which replica served it (for the app's logs)
    if status == 401 and "www-authenticate" not in headers:
        headers["www-authenticate"] = f'{CHALLENGE}, error="invalid_token"'
    return headers


def _whole(answer: InnerResponse) -> Response:
    """A whole (not streamed) answer, as the app sees it."""
    return Response(answer.body, status_code=answer.status,
                    media_type=answer.header("content-type") or "application/json",
                    headers=_answer_headers(answer.headers, answer.status, answer.replica))


async def forward(request: Request, session: Enclaves, method: str, path: str,
                  body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """One request forwarded encapsulated; ``headers``: more inner headers (a sealed
    conversation's share), which exist only inside the encapsulation upstream."""
    slots: Slots = request.app.state.slots
    slots.take()
    handed_over = False
    try:
        upstream = await _upstream(request, method, path, body)
        if method == "POST" and _wants_stream(body):
            stream = await run_in_threadpool(session.stream, method, path, body=body,
                                             authorization=upstream.authorization,
                                             dpop=upstream.dpop, headers=headers)

            def content() -> Iterator[bytes]:
                # Each piece leaves as soon as it arrives (no look-ahead: a held piece would
                # wait for the next token). The slot is freed before the stream's last event
                # leaves, so an app that has read the whole answer and asks again at once never
                # finds its own stream still counted.
                released = False
                try:
                    for piece in stream.iter_content():
                        if not released and any(e in piece for e in _LAST_EVENTS):
                            released = True
                            slots.give()
                        yield piece
                finally:
                    stream.close()  # an app that left: the upstream stream closes now
                    if not released:
                        slots.give()

            body_iter = content()
            handed_over = True
            # The app leaving shuts the upstream stream down at once (_drop), so the enclave
            # records the answer and stops the engine.
            return ClosingStreamingResponse(
                body_iter, lambda how: _drop(stream, body_iter, how), status_code=stream.status,
                media_type=stream.header("content-type") or "text/event-stream",
                headers=_answer_headers(stream.headers, stream.status, stream.replica))
        # An app that leaves before its whole answer is ready: the upstream request is dropped,
        # so the enclave stops generating within a token (and records the request).
        abort = Abort()
        answers: list[InnerResponse] = []
        await run_sync_until_gone(request, lambda: answers.append(session.request(
            method, path, body=body, authorization=upstream.authorization, dpop=upstream.dpop,
            abort=abort, headers=headers)), on_gone=abort)
        return _whole(answers[0])
    finally:
        if not handed_over:
            slots.give()


async def _upload(request: Request, session: Enclaves, path: str, body: bytes) -> Response:
    """A large body (audio, or a scribe request that may carry it) in chunked OHTTP, to an
    enclave whose verified runtime states ``audio_retention: none`` (EnclaveSession.upload)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/json")):
        raise InputError("input.malformed", "send multipart/form-data or application/json")
    slots: Slots = request.app.state.slots
    slots.take()
    try:
        # Admission reads the model a JSON body names; a form names none (Cedar sees it as
        # unnamed, as it would any request that does not say).
        upstream = await _upstream(request, "POST", path,
                                   body if content_type.startswith("application/json") else b"")
        answer = await run_in_threadpool(session.upload, path, body=body,
                                         content_type=content_type,
                                         authorization=upstream.authorization,
                                         dpop=upstream.dpop, audio=True)
    finally:
        slots.give()
    return _whole(answer)


def _add_json_route(path: str) -> None:
    async def route(request: Request, session: SessionDep, body: BodyDep) -> Response:
        return await forward(request, session, "POST", path, body)

    router.add_api_route(path, route, methods=["POST"], name=path)


def _add_upload_route(path: str) -> None:
    async def route(request: Request, session: SessionDep, body: AudioBodyDep) -> Response:
        return await _upload(request, session, path, body)

    router.add_api_route(path, route, methods=["POST"], name=path)


# Each OpenAI JSON endpoint is forwarded as it came; FHIR records to ingest (RECORDS_PATH,
# docs/retrieval.md) are encapsulated like every request. Audio and the scribe go chunked.
for _path in (proto.CHAT_PATH, proto.COMPLETIONS_PATH, proto.RESPONSES_PATH,
              proto.EMBEDDINGS_PATH, proto.RECORDS_PATH, proto.SEARCH_PATH):
    _add_json_route(_path)
for _path in (proto.TRANSCRIPTIONS_PATH, proto.SCRIBE_PATH):
    _add_upload_route(_path)


@router.get(proto.MODELS_PATH)
async def models(request: Request, session: SessionDep) -> Response:
    return await forward(request, session, "GET", proto.MODELS_PATH)


@router.get(proto.MODELS_PATH + "/{model_id:path}")
async def model(request: Request, session: SessionDep, model_id: str) -> Response:
    return await forward(request, session, "GET", proto.model_path(model_id))


@router.get("/medclave/status")
async def status(session: SessionDep) -> dict[str, Any]:
    """The last verified evidence: platform, measurement, model digest, when; and ``trust``:
    whether the latest (re-)attestation passed, and if not, its code and why."""
    enclave = session.enclave
    out: dict[str, Any] = {"upstream_verified": enclave is not None,
                           "enclave": dict(summary(enclave)), "trust": session.trust_state()}
    if isinstance(session, ReplicaSet):
        out["replicas"] = session.replicas()
    return out

