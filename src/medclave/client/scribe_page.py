"""The clinician's scribe page, served by the proxy at ``/app/scribe`` (static files only).

The page (``client/static/scribe/``) records the visit in the browser (MediaRecorder, WebM/Opus)
or takes a file, shows what the proxy verified about the enclave (a red banner on ``sim``,
which protects nothing), sends the audio to ``POST /v1/medclave/scribe`` on this same proxy
(which encapsulates it to the attested enclave), then shows the draft note with each
statement's transcript span highlighted, the suggested codes to accept or drop, and the FHIR
DocumentReference to copy or download. It talks only to this proxy: a strict Content Security
Policy allows nothing else (no inline script, no other origin), and the audio never leaves the
browser's memory except inside that request.

``GET /app/scribe/status`` attests the upstream now if nothing was verified yet, so the page
can show the verification state before any audio is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from medclave.client.replicas import Enclaves
from medclave.client.session import summary
from medclave.errors import InputError, MedclaveError

STATIC: Final = Path(__file__).parent / "static" / "scribe"
ASSETS: Final = {"scribe.js": "text/javascript", "scribe.css": "text/css"}
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
              "media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; "
              "form-action 'none'; frame-ancestors 'none'")
_HEADERS: Final = {"content-security-policy": CSP, "cache-control": "no-store",
                   "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}

router = APIRouter()


@router.get("/app/scribe")
async def page() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers=_HEADERS)


@router.get("/app/scribe/status")
async def status(request: Request) -> dict[str, Any]:
    """The verified enclave (attesting now if the proxy has not yet), or why it is not."""
    session: Enclaves = request.app.state.session
    if session.enclave is None:
        try:
            await run_in_threadpool(session.attest)
        except MedclaveError as exc:
            return {"upstream_verified": False, "error": exc.code}
    return {"upstream_verified": session.enclave is not None,
            "enclave": dict(summary(session.enclave))}


@router.get("/app/scribe/{name}")
async def asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:  # only the page's own files: no path from the request reaches the disk
        raise InputError("input.no_route", "no such file")
    return FileResponse(STATIC / name, media_type=media, headers=_HEADERS)


def mount_scribe_page(app: FastAPI) -> None:
    app.include_router(router)
