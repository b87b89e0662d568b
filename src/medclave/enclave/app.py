"""The enclave's HTTP face: two routes that translate HTTP to :class:`InferenceService` calls.

Error bodies outside the encapsulation are ``{"error": {"code", "message"}}`` with the public
message only; they concern only what the operator already sees (a request that does not
decapsulate, a malformed nonce).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from medclave.enclave.service import InferenceService
from medclave.enclave.settings import EnclaveSettings, get_settings
from medclave.errors import MedclaveError
from medclave.protocol import inference as proto
from medclave.serving import install_error_handlers, read_limited_body

log = logging.getLogger("medclave.enclave")

router = APIRouter()
SettingsDep = Annotated[EnclaveSettings, Depends(get_settings)]


def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


ServiceDep = Annotated[InferenceService, Depends(get_service)]


async def read_body(request: Request, settings: SettingsDep) -> bytes:
    """The request body, refused past ``max_request_bytes`` before it is all read."""
    return await read_limited_body(request, settings.max_request_bytes)


BodyDep = Annotated[bytes, Depends(read_body)]


@router.get(proto.ATTESTATION_PATH)
async def attestation(service: ServiceDep,
                      nonce: Annotated[str, Query(max_length=2 * proto.MAX_NONCE_BYTES)]
                      ) -> Response:
    value = proto.parse_nonce(nonce)
    bundle = await run_in_threadpool(service.attest, value)
    return Response(bundle.model_dump_json(), media_type=proto.EVIDENCE_MEDIA_TYPE,
                    headers={"cache-control": "no-store"})


@router.post(proto.OHTTP_PATH)
async def ohttp(service: ServiceDep, body: BodyDep,
                content_type: Annotated[str, Header()] = "") -> Response:
    outer = await run_in_threadpool(service.handle, body, content_type)
    headers = {"cache-control": "no-store"}
    if outer.stream is not None:
        return StreamingResponse(outer.stream, status_code=outer.status,
                                 media_type=outer.media_type, headers=headers)
    return Response(outer.body, status_code=outer.status, media_type=outer.media_type,
                    headers=headers)


def _log_refusal(request: Request, exc: MedclaveError) -> None:
    log.info("refused %s %s: %s", request.method, request.url.path, exc.code)


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
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(router)
    install_error_handlers(app, log_refusal=_log_refusal, route_error=_route_error,
                           log_unexpected=_log_unexpected)
    return app
