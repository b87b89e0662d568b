"""FastAPI dependencies: settings, the broker, the client's identity, rate limits, owner auth."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from medclave.errors import MedclaveError
from medclave.kbs.ratelimit import Limiter
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings, get_settings
from medclave.serving import read_limited_body

SettingsDep = Annotated[KbsSettings, Depends(get_settings)]


def get_broker(request: Request) -> KeyBroker:
    broker: KeyBroker = request.app.state.broker
    return broker


BrokerDep = Annotated[KeyBroker, Depends(get_broker)]


def client_id(request: Request) -> str:
    """The network identity the rate limit and decision log use: the TCP peer, which uvicorn
    replaces by the forwarded client only on connections from a configured trusted proxy
    (:class:`~medclave.serving.ServingSettings`); the headers are never read here."""
    host = request.client.host if request.client else "unknown"
    return f"ip:{host[:64]}"


ClientDep = Annotated[str, Depends(client_id)]


def rate_limit(request: Request, client: ClientDep) -> None:
    limiter: Limiter = request.app.state.limiter
    limiter.check(client)


async def read_body(request: Request, settings: SettingsDep) -> bytes:
    """The request body, refused past ``max_request_bytes`` before it is all read."""
    return await read_limited_body(request, settings.max_request_bytes)


BodyDep = Annotated[bytes, Depends(read_body)]


def owner(
    request: Request,
    broker: BrokerDep,
    client: ClientDep,
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    """The owner an ``Authorization: Bearer`` token belongs to; failures are recorded."""
    token = None
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    try:
        return broker.authenticate(token)
    except MedclaveError as exc:
        broker.record_refusal("authenticate", request.url.path[:400], client, exc)
        raise


OwnerDep = Annotated[str, Depends(owner)]
