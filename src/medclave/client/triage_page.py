"""The patient's triage chat page at the proxy (``/app/triage``), and the proxy's forwarding of
the sealed-conversation API (``/v1/medclave/conversations``, ``/v1/medclave/triage/alerts``).

How the page reaches the confidential path: the proxy is the hospital-side OHTTP client. The
page (static files here, no third-party code) talks only to the proxy on loopback, sending the
patient's token and the client share as headers; the proxy verifies the enclave's attestation,
encapsulates each request (share included) to the attested key and hands back the decrypted
answer. The share is made in the browser and kept in IndexedDB, never in a cookie; the proxy
holds it only for the life of one request and never logs it. Between the browser and the proxy
the traffic is plain HTTP on 127.0.0.1, like every app the proxy serves; a deployment that
puts the page on another machine must put TLS in front of the proxy.

Sign-in (development): the page posts the patient's user name and password to
``/app/triage/token``, which the proxy forwards to the development IdP's password grant
(``triage_signin_url``); a hospital's own sign-in replaces it.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from medclave.client.proxy_routes import BodyDep, SessionDep, forward
from medclave.errors import ClientError, InputError
from medclave.protocol import inference as proto

log = logging.getLogger("medclave.proxy")
router = APIRouter()
_STATIC = {"triage.js": "text/javascript", "triage.css": "text/css"}
# The page loads only its own files and talks only to this origin.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
ShareHeader = Annotated[str | None, Header(alias=proto.SHARE_HEADER)]


def _asset(name: str) -> bytes:
    return resources.files("medclave.client").joinpath("static", name).read_bytes()


def _headers(share: str | None) -> tuple[tuple[str, str], ...]:
    return ((proto.SHARE_HEADER, share),) if share else ()


@router.get("/app/triage")
async def page() -> Response:
    return Response(_asset("triage.html"), media_type="text/html; charset=utf-8",
                    headers={"content-security-policy": _CSP, "cache-control": "no-store",
                             "referrer-policy": "no-referrer"})


@router.get("/app/triage/{name}")
async def asset(name: str) -> Response:
    if name not in _STATIC:
        raise InputError("input.no_route", "no such file")
    return Response(_asset(name), media_type=_STATIC[name],
                    headers={"content-security-policy": _CSP})


@router.get("/app/triage-verification")
async def verification(session: SessionDep) -> dict[str, object]:
    """What was verified, attesting now if nothing has been yet."""
    enclave = session.enclave
    if enclave is None:
        enclave = await run_in_threadpool(session.attest)
    return {"verified": True, "enclave": enclave.summary()}


class SigninUrl:
    def __call__(self, request: Request) -> str:
        url: str | None = getattr(request.app.state, "triage_signin_url", None)
        if not url:
            raise InputError("input.no_route", "sign-in is not configured at this proxy")
        return url


@router.post("/app/triage/token")
async def token(request: Request, body: BodyDep,
                url: Annotated[str, Depends(SigninUrl())]) -> Response:
    """Development sign-in: the form goes to the IdP's token endpoint as it came."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            answer = await http.post(url, content=body, headers={
                "content-type": "application/x-www-form-urlencoded"})
    except httpx.HTTPError as exc:
        raise ClientError("client.idp_unavailable", type(exc).__name__) from None
    return JSONResponse(answer.json(), status_code=answer.status_code,
                        headers={"cache-control": "no-store"})


# --- the sealed-conversation API, forwarded encapsulated -------------------------------------

@router.post(proto.CONVERSATIONS_PATH)
async def create(request: Request, session: SessionDep, body: BodyDep,
                 share: ShareHeader = None) -> Response:
    return await forward(request, session, "POST", proto.CONVERSATIONS_PATH, body or b"{}",
                       _headers(share))


@router.get(proto.CONVERSATIONS_PATH)
async def listing(request: Request, session: SessionDep, share: ShareHeader = None
                  ) -> Response:
    return await forward(request, session, "GET", proto.CONVERSATIONS_PATH,
                       headers=_headers(share))


@router.get(proto.CONVERSATIONS_PATH + "/{conversation}")
async def export(request: Request, session: SessionDep, conversation: str,
                 share: ShareHeader = None) -> Response:
    return await forward(request, session, "GET", f"{proto.CONVERSATIONS_PATH}/{conversation}",
                       headers=_headers(share))


@router.delete(proto.CONVERSATIONS_PATH + "/{conversation}")
async def delete(request: Request, session: SessionDep, conversation: str,
                 share: ShareHeader = None) -> Response:
    return await forward(request, session, "DELETE",
                       f"{proto.CONVERSATIONS_PATH}/{conversation}", headers=_headers(share))


@router.post(proto.CONVERSATIONS_PATH + "/{conversation}/turns")
async def turn(request: Request, session: SessionDep, conversation: str, body: BodyDep,
               share: ShareHeader = None) -> Response:
    return await forward(request, session, "POST",
                       f"{proto.CONVERSATIONS_PATH}/{conversation}/turns", body,
                       _headers(share))


@router.get(proto.TRIAGE_ALERTS_PATH)
async def alerts(request: Request, session: SessionDep) -> Response:
    return await forward(request, session, "GET", proto.TRIAGE_ALERTS_PATH)
