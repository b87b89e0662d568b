"""The local proxy: plain OpenAI-compatible HTTP on 127.0.0.1 for apps that cannot change.

An unmodified app points its OpenAI client at ``http://127.0.0.1:8080/v1``. The proxy attests
the upstream enclave against the hospital's policy, then forwards each request encapsulated
(the app's bearer token inside), and hands back the decrypted answer, streamed or whole.
``GET /medclave/status`` shows the last verified evidence. It listens on loopback only by
default: between the app and the proxy the traffic is plain.

Refusals reach the app as OpenAI-shaped errors (``{"error": {"code": "attestation...."}}``),
with status 502 when the upstream could not be trusted or reached.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medclave.attestation.policy import load_policy
from medclave.client.session import EnclaveSession, summary
from medclave.errors import InputError, MedclaveError
from medclave.protocol import inference as proto

log = logging.getLogger("medclave.proxy")

MAX_BODY = proto.MAX_INNER_BODY
_PASS_HEADERS = ("content-type", proto.REQUEST_ID_HEADER, proto.RECEIPT_HEADER)


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_PROXY_", extra="forbid", frozen=True)

    upstream: str
    policy_file: Path
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    sim_roots: tuple[str, ...] = ()
    reattest_seconds: int = Field(default=300, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)


@lru_cache(maxsize=1)
def get_settings() -> ProxySettings:
    return ProxySettings()  # type: ignore[call-arg]  # from the environment


def session_for(settings: ProxySettings) -> EnclaveSession:
    return EnclaveSession(settings.upstream, load_policy(settings.policy_file),
                          sim_roots=frozenset(settings.sim_roots),
                          reattest_after=timedelta(seconds=settings.reattest_seconds),
                          timeout=settings.timeout_seconds)


router = APIRouter()


def get_session(request: Request) -> EnclaveSession:
    session: EnclaveSession = request.app.state.session
    return session


SessionDep = Annotated[EnclaveSession, Depends(get_session)]
AuthHeader = Annotated[str | None, Header(alias="authorization")]


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise InputError("input.too_large", f"request body over {MAX_BODY} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise InputError("input.too_large", f"request body over {MAX_BODY} bytes")
    return bytes(data)


BodyDep = Annotated[bytes, Depends(read_body)]


def _wants_stream(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False  # the enclave answers the malformed body with its own 400
    return isinstance(value, dict) and value.get("stream") is True


async def _forward(session: SessionDep, path: str, body: bytes,
                   authorization: str | None) -> Response:
    if _wants_stream(body):
        stream = await run_in_threadpool(session.stream, "POST", path, body=body,
                                         authorization=authorization)
        headers = {k: v for k, v in stream.headers if k in _PASS_HEADERS and k != "content-type"}
        return StreamingResponse(stream.iter_content(), status_code=stream.status,
                                 media_type=stream.header("content-type") or "text/event-stream",
                                 headers=headers)
    answer = await run_in_threadpool(session.request, "POST", path, body=body,
                                     authorization=authorization)
    headers = {k: v for k, v in answer.headers if k in _PASS_HEADERS and k != "content-type"}
    return Response(answer.body, status_code=answer.status,
                    media_type=answer.header("content-type") or "application/json",
                    headers=headers)


@router.post(proto.CHAT_PATH)
async def chat_completions(session: SessionDep, body: BodyDep,
                           authorization: AuthHeader = None) -> Response:
    return await _forward(session, proto.CHAT_PATH, body, authorization)


@router.post(proto.COMPLETIONS_PATH)
async def completions(session: SessionDep, body: BodyDep,
                      authorization: AuthHeader = None) -> Response:
    return await _forward(session, proto.COMPLETIONS_PATH, body, authorization)


@router.get(proto.MODELS_PATH)
async def models(session: SessionDep, authorization: AuthHeader = None) -> Response:
    answer = await run_in_threadpool(session.request, "GET", proto.MODELS_PATH,
                                     authorization=authorization)
    return Response(answer.body, status_code=answer.status,
                    media_type=answer.header("content-type") or "application/json")


@router.get("/medclave/status")
async def status(session: SessionDep) -> dict[str, Any]:
    """The last verified evidence: platform, measurement, model digest, when."""
    enclave = session.enclave
    return {"upstream_verified": enclave is not None, "enclave": dict(summary(enclave))}


def _error(exc: MedclaveError) -> JSONResponse:
    family = exc.code.split(".", 1)[0]
    untrusted = family in ("attestation", "policy", "crypto", "protocol", "audit")
    status = 502 if untrusted or exc.status >= 500 else exc.status
    kind = "medclave_refusal" if untrusted else "invalid_request_error"
    return JSONResponse({"error": {"message": exc.public_message if untrusted else exc.detail,
                                   "type": kind, "param": None, "code": exc.code}},
                        status_code=status)


async def _medclave_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MedclaveError)
    log.warning("refused %s %s: %s", request.method, request.url.path, exc.code)
    return _error(exc)


def create_proxy_app(session: EnclaveSession) -> FastAPI:
    app = FastAPI(title="Medclave proxy", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.session = session
    app.include_router(router)
    app.add_exception_handler(MedclaveError, _medclave_error)
    return app


def serve(settings: ProxySettings) -> None:
    import uvicorn

    session = session_for(settings)
    try:
        uvicorn.run(create_proxy_app(session), host=settings.host, port=settings.port,
                    log_level="info", server_header=False, date_header=False)
    finally:
        session.close()
