"""``medclave idp serve``: the dev issuer over HTTP (FastAPI + uvicorn).

Kept out of the library core: the rest of ``medclave.auth`` imports no web framework. Routes:
``GET /.well-known/openid-configuration``, ``GET /jwks.json``, ``POST /token``
(``application/x-www-form-urlencoded``: client credentials, RFC 6749 §4.4; token exchange,
RFC 8693, for clients allowed to act for users; when enabled, the password grant, §4.3). Errors
follow RFC 6749 §5.2 (``error``, ``error_description``) plus Medclave's stable ``code``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote_plus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medclave.auth.issuer import (
    DEFAULT_AUDIENCE,
    DEFAULT_DATA_DIR,
    Directory,
    SigningAlg,
    TokenIssuer,
    TokenService,
    load_or_create_signing_key,
)
from medclave.auth.replay import FailureLog, ReplayCache
from medclave.errors import InputError, MedclaveError
from medclave.ops import lifecycle
from medclave.ops.health import Health
from medclave.ops.http import instrument, note_refusal
from medclave.ops.logs import configure_logging
from medclave.ops.settings import OpsSettings
from medclave.ops.tracing import Tracing
from medclave.postgres.pool import store_setting
from medclave.serving import ServingSettings, read_limited_body
from medclave.util.clock import Clock, system_clock

log = logging.getLogger("medclave.idp")
MAX_FORM_BYTES: Final = 8 * 1024
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_OAUTH_ERRORS: Final = {
    "auth.invalid_credentials": "invalid_client",
    "auth.dpop_invalid": "invalid_dpop_proof",
    "auth.rate_limited": "slow_down",
    "input.unrecognized": "unsupported_grant_type",
    "auth.exchange_forbidden": "unauthorized_client",  # RFC 6749 §5.2
    "auth.scope_exceeded": "invalid_scope",
    # RFC 8693 §2.2.2: an unacceptable subject_token is invalid_request (the default).
}


class IdpSettings(BaseSettings, ServingSettings, OpsSettings):
    """``medclave idp serve``'s configuration, ``MEDCLAVE_IDP_*`` (and ``--config``, flags)."""

    model_config = SettingsConfigDict(env_prefix="MEDCLAVE_IDP_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8800, ge=0, le=65535)
    data_dir: Path = DEFAULT_DATA_DIR
    issuer: str | None = None  # default http://HOST:PORT
    audience: str = DEFAULT_AUDIENCE
    alg: Literal["EdDSA", "ES256"] = "EdDSA"
    token_ttl_seconds: int = Field(default=300, ge=30, le=86400)
    dev_password: bool = False
    # A postgresql:// URL shared by the IdP's replicas: a DPoP proof at the token endpoint is
    # then accepted once across all of them, and failed logins are counted across all of them
    # (docs/scaling-out.md). None: this process's memory.
    store: str | None = None
    store_allow_remote: bool = False

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        return None if value is None else store_setting(value, names=())


def _oauth_error(exc: MedclaveError, *, password_grant: bool) -> JSONResponse:
    error = _OAUTH_ERRORS.get(exc.code, "invalid_request")
    if exc.code == "auth.invalid_credentials" and password_grant:
        error = "invalid_grant"  # RFC 6749 §5.2: bad resource-owner credentials
    status = 401 if error == "invalid_client" else (429 if error == "slow_down" else 400)
    body = {"error": error, "error_description": exc.public_message, "code": exc.code}
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="medclave-idp"'
    if status == 429:
        headers["Retry-After"] = str(int(TokenService.WINDOW.total_seconds()))  # RFC 9110 §10.2.3
    return JSONResponse(body, status_code=status, headers=headers)


def _basic(value: str | None) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: Basic credentials, each part form-urlencoded before base64."""
    if value is None:
        return None
    scheme, _, blob = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(blob.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, sep, secret = text.partition(":")
    return (unquote_plus(user), unquote_plus(secret)) if sep else ("", "")


def create_app(service: TokenService, *, clock: Clock = system_clock,
               tracing: Tracing | None = None) -> FastAPI:
    app = FastAPI(title="Medclave dev IdP", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/.well-known/openid-configuration")
    def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.get("/jwks.json")
    def jwks() -> JSONResponse:
        return JSONResponse(service.issuer.jwks(), headers={"Cache-Control": "max-age=300"})

    @app.post("/token")
    async def token(request: Request) -> JSONResponse:
        password_grant = False
        try:
            if request.headers.get("content-type", "").split(";")[0].strip() != (
                "application/x-www-form-urlencoded"
            ):
                raise InputError("input.malformed", "the body must be form-urlencoded")
            body = await read_limited_body(request, MAX_FORM_BYTES)
            pairs = parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=bool(body),
                max_num_fields=32,
            )
            form = dict(pairs)
            if len(form) != len(pairs):
                raise InputError("input.malformed", "a parameter is repeated (RFC 6749 §3.2)")
            password_grant = form.get("grant_type") == "password"
            answer = service.token(
                form,
                basic=_basic(request.headers.get("authorization")),
                dpop=request.headers.get("dpop"),
                now=clock(),
            )
        except MedclaveError as exc:
            log.info("idp refused POST /token: %s", exc.code)
            note_refusal(request, exc.code)
            return _oauth_error(exc, password_grant=password_grant)
        except (UnicodeDecodeError, ValueError):
            log.info("idp refused POST /token: input.malformed")
            note_refusal(request, "input.malformed")
            return _oauth_error(InputError("input.malformed"), password_grant=password_grant)
        return JSONResponse(answer, headers=_NO_STORE)

    instrument(app, service="idp", tracing=tracing, health=Health({
        "signing_key": lambda: bool(service.issuer.jwks().get("keys")),
    }))
    return app


def build_service(
    data_dir: Path,
    *,
    issuer: str,
    alg: SigningAlg = "EdDSA",
    audience: str = DEFAULT_AUDIENCE,
    ttl: timedelta = timedelta(minutes=5),
    dev_password: bool = False,
    replay: ReplayCache | None = None,
    failures: FailureLog | None = None,
) -> TokenService:
    key = load_or_create_signing_key(data_dir, alg=alg)
    token_issuer = TokenIssuer(issuer, key, audience=audience, default_ttl=ttl)
    return TokenService(token_issuer, Directory(data_dir), audiences=(audience,),
                        dev_password=dev_password, replay=replay, failures=failures)


def serve(service: TokenService, settings: IdpSettings) -> None:
    """Run until stopped (SIGTERM drains: :mod:`medclave.ops.lifecycle`)."""
    configure_logging("idp", level=settings.log_level, fmt=settings.log_format)
    app = create_app(service, tracing=Tracing.of("idp", settings.tracing,
                                                 settings.otlp_endpoint))
    lifecycle.serve(app, settings, settings, host=settings.host, port=settings.port)

