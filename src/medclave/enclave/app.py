"""The enclave's HTTP face: two routes that translate HTTP to :class:`InferenceService` calls.

Error bodies outside the encapsulation are ``{"error": {"code", "message"}}`` with the public
message only; they concern only what the operator already sees (a request that does not
decapsulate, a malformed nonce, how many requests are in progress).

Attestation and inference run in thread limits of their own (issue 9 §6: 45 long inferences in
the shared pool made attestation wait 3 s), and inference is admitted only while fewer than
``max_concurrent_inferences`` are in progress: one more is answered 429 with ``Retry-After`` at
once (:mod:`medclave.enclave.limits`). A streamed answer holds its slot until it ends, and is
closed however the response ends, the client leaving included, so that it is recorded
(:class:`~medclave.serving.ClosingStreamingResponse`).

While the service works on a request (a whole answer generating, or any request waiting for the
engine), the router listens for its client leaving and then sets the request's
:class:`~medclave.enclave.engines.base.Cancel` (issue 10 §4: a client that timed out kept the
engine busy to the end, and everyone queued behind it waiting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from medclave.audit.entry import Ending
from medclave.enclave.engines.base import Cancel
from medclave.enclave.limits import Busy, Slot, Slots
from medclave.enclave.observe import instrument_enclave
from medclave.enclave.service import InferenceService, OuterResponse
from medclave.enclave.settings import EnclaveSettings, get_settings
from medclave.enclave.streaming import AnswerStream
from medclave.errors import MedclaveError
from medclave.ops.http import note_refusal
from medclave.protocol import inference as proto
from medclave.serving import (
    ClosingStreamingResponse,
    StreamEnd,
    install_error_handlers,
    read_limited_body,
    run_sync_until_gone,
)

log = logging.getLogger("medclave.enclave")

router = APIRouter()
SettingsDep = Annotated[EnclaveSettings, Depends(get_settings)]


def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


ServiceDep = Annotated[InferenceService, Depends(get_service)]


@dataclass(frozen=True)
class Limits:
    """How much runs at once, and where."""

    inferences: Slots  # admitted inferences, streams included until they end
    # Each admitted inference uses one thread at a time for its work and, while its client
    # leaves, one more to close it: twice the admission limit, so no inference waits for one.
    inference_threads: anyio.CapacityLimiter
    attestation_threads: anyio.CapacityLimiter
    retry_after: int

    @classmethod
    def of(cls, settings: EnclaveSettings) -> Limits:
        return cls(Slots(settings.max_concurrent_inferences),
                   anyio.CapacityLimiter(2 * settings.max_concurrent_inferences),
                   anyio.CapacityLimiter(settings.max_concurrent_attestations),
                   settings.busy_retry_after_seconds)


def get_limits(request: Request) -> Limits:
    limits: Limits = request.app.state.limits
    return limits


LimitsDep = Annotated[Limits, Depends(get_limits)]


async def read_body(request: Request, settings: SettingsDep) -> bytes:
    """The request body, refused past ``max_request_bytes`` before it is all read."""
    return await read_limited_body(request, settings.max_request_bytes)


BodyDep = Annotated[bytes, Depends(read_body)]


@router.get(proto.ATTESTATION_PATH)
async def attestation(service: ServiceDep, limits: LimitsDep,
                      nonce: Annotated[str, Query(max_length=2 * proto.MAX_NONCE_BYTES)]
                      ) -> Response:
    value = proto.parse_nonce(nonce)
    bundle = await anyio.to_thread.run_sync(service.attest, value,
                                            limiter=limits.attestation_threads)
    return Response(bundle.model_dump_json(), media_type=proto.EVIDENCE_MEDIA_TYPE,
                    headers={"cache-control": "no-store"})


@router.post(proto.OHTTP_PATH)
async def ohttp(request: Request, service: ServiceDep, limits: LimitsDep, body: BodyDep,
                content_type: Annotated[str, Header()] = "") -> Response:
    slot = limits.inferences.take()
    if slot is None:
        busy = Busy(detail=f"{limits.inferences.limit} inferences in progress",
                    retry_after=limits.retry_after)
        log.info("refused POST %s: %s", proto.OHTTP_PATH, busy.code)
        note_refusal(request, busy.code)
        return JSONResponse(busy.to_public(), status_code=busy.status,
                            headers=dict(busy.headers()))
    done: list[OuterResponse] = []
    cancel = Cancel()
    try:
        await run_sync_until_gone(request,
                                  lambda: done.append(service.handle(body, content_type, cancel)),
                                  on_gone=cancel.set, limiter=limits.inference_threads)
    except BaseException:
        # Cancelled while the service worked (the server stopping): a stream it opened is
        # closed, so that it is recorded and its tenant's slot freed.
        if done and done[0].stream is not None:
            await _close(done[0].stream, "cancelled", limits.inference_threads)
        slot.release()
        raise
    outer = done[0]
    headers = {"cache-control": "no-store"}
    if outer.stream is not None and cancel.is_set():
        # Gone while the stream was being set up: nobody will read it.
        await _close(outer.stream, "client_gone", limits.inference_threads)
        slot.release()
        return Response(status_code=499)
    if outer.stream is not None:
        return ClosingStreamingResponse(outer.stream, _closer(outer.stream, slot),
                                        limiter=limits.inference_threads,
                                        status_code=outer.status, media_type=outer.media_type,
                                        headers=headers)
    slot.release()
    return Response(outer.body, status_code=outer.status, media_type=outer.media_type,
                    headers=headers)


# "ended": the whole body was sent, so the answer had recorded itself and closing it records
# nothing; the ending given is moot.
_ENDINGS: dict[StreamEnd, Ending] = {"ended": "cancelled", "client_gone": "client_gone",
                                     "cancelled": "cancelled", "error": "error"}


def _closer(stream: AnswerStream, slot: Slot) -> Callable[[StreamEnd], None]:
    """Closes a streamed answer however its response ends (recording it, if it had not ended
    by itself, and stopping the engine), then gives its inference slot back."""
    def close(how: StreamEnd) -> None:
        try:
            stream.close(_ENDINGS[how])
        finally:
            slot.release()
    return close


async def _close(stream: AnswerStream, ending: Ending, threads: anyio.CapacityLimiter) -> None:
    # Shielded: closing records the answer, which must happen even in a cancelled task; on a
    # thread, since recording appends to the audit log.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(stream.close, ending, limiter=threads)


def _log_refusal(request: Request, exc: MedclaveError) -> None:
    log.info("refused %s %s: %s", request.method, request.url.path, exc.code)
    note_refusal(request, exc.code)


def _route_error(status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": "input.malformed", "message": "no such route"}},
                        status_code=404 if status == 404 else 400)


def _log_unexpected(request: Request, exc: Exception) -> None:
    # The type only: an exception's message or traceback may carry request content (PHI).
    log.error("internal error on %s %s: %s", request.method, request.url.path,
              type(exc).__name__)


def create_app(service: InferenceService, settings: EnclaveSettings | None = None) -> FastAPI:
    app = FastAPI(title="Medclave enclave", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service
    app.state.limits = Limits.of(settings or get_settings())
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(router)
    install_error_handlers(app, log_refusal=_log_refusal, route_error=_route_error,
                           log_unexpected=_log_unexpected)
    instrument_enclave(app, service, settings or get_settings())  # /healthz, /readyz, metrics
    return app
