"""HTTP routes: they translate requests to :class:`KeyBroker` calls and results to JSON, no more.

Release protocol (``/kbs/v1/challenge``, ``/kbs/v1/release``) for enclaves; the owner API
(``/kbs/v1/owner/...``) for resource owners with a bearer token.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ValidationError

from medclave.crypto.canonical import load_json
from medclave.errors import InputError, MedclaveError
from medclave.kbs.deps import BodyDep, BrokerDep, ClientDep, OwnerDep, rate_limit
from medclave.kbs.models import (
    BrokerKeyOut,
    ChallengeResponse,
    PolicyOut,
    ReleaseRequest,
    ReleaseResponse,
    ResourceOut,
    ResourceVersionOut,
    SecretBody,
    StandingRequest,
    StandingResponse,
    release_policy_from_obj,
)
from medclave.kbs.names import ResourceName
from medclave.kbs.revocation import RevocationIn

release_router = APIRouter(prefix="/kbs/v1", dependencies=[Depends(rate_limit)])
owner_router = APIRouter(prefix="/kbs/v1/owner", dependencies=[Depends(rate_limit)])

_PATH = "/{owner_name}/{rtype}/{name}"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ResourcePath:
    """The ``{owner_name}/{rtype}/{name}`` of an owner route, as a dependency.

    Checked only when a route reads :attr:`resource`, in its body: a malformed name is refused
    after the caller is authenticated (and its refusal recorded), never before.
    """

    owner_name: str
    rtype: str
    name: str

    @property
    def resource(self) -> str:
        return str(ResourceName.of(self.owner_name, self.rtype, self.name))


PathDep = Annotated[ResourcePath, Depends()]


def _json_model(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise InputError("input.malformed", f"{where}: {err.get('msg', 'invalid')}") from exc


@release_router.post("/challenge")
def challenge(broker: BrokerDep) -> ChallengeResponse:
    issued = broker.challenge()
    return ChallengeResponse(nonce=issued.nonce.hex(), expires_at=issued.expires_at.isoformat())


@release_router.post("/release")
def release(broker: BrokerDep, client: ClientDep, body: BodyDep) -> ReleaseResponse:
    try:
        request = _json_model(ReleaseRequest, body)
    except MedclaveError as exc:
        broker.record_refusal("release", "", client, exc)
        raise
    result = broker.release(
        request.resource, request.nonce, request.evidence, client, version=request.version
    )
    return ReleaseResponse(sealed=base64.b64encode(result.sealed).decode(), version=result.version,
                           key_id=result.key_id,
                           signature=base64.b64encode(result.signature).decode())


@release_router.post("/standing")
def standing(broker: BrokerDep, client: ClientDep, body: BodyDep) -> StandingResponse:
    try:
        request = _json_model(StandingRequest, body)
    except MedclaveError as exc:
        broker.record_refusal("standing", "", client, exc)
        raise
    result = broker.standing(request.resource, request.nonce, request.evidence, client)
    return StandingResponse(resource=result.resource, standing=result.standing,
                            key_id=result.key_id,
                            signature=base64.b64encode(result.signature).decode())


@release_router.get("/keys")
def keys(broker: BrokerDep) -> list[BrokerKeyOut]:
    """The broker's public signing key. For reading, not for trusting: an enclave pins the key
    it was configured with (`medclave kbs key show` on the broker's host), never this answer."""
    signer = broker.signer
    return [BrokerKeyOut(key_id=signer.key_id,
                         public_key=base64.b64encode(signer.public_key).decode())]


def _secret(body: SecretBody) -> bytes | None:
    if body.secret is None:
        return None
    try:
        return base64.b64decode(body.secret, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError("input.malformed", "secret is not base64") from exc


@owner_router.get("/resources")
def list_resources(broker: BrokerDep, owner: OwnerDep, client: ClientDep) -> list[ResourceOut]:
    return [
        ResourceOut(resource=i.resource, current=i.current, versions=list(i.versions))
        for i in broker.list_resources(owner, client_id=client)
    ]


@owner_router.get("/resources" + _PATH)
def get_resource(
    path: PathDep, broker: BrokerDep, owner: OwnerDep, client: ClientDep
) -> ResourceOut:
    resource = path.resource
    info = broker.resource(owner, resource, client_id=client)
    versions = broker.policy_versions(owner, resource)
    return ResourceOut(
        resource=info.resource,
        current=info.current,
        versions=list(info.versions),
        policy_version=max(versions) if versions else None,
    )


@owner_router.put("/resources" + _PATH, status_code=201)
def create_resource(
    path: PathDep, broker: BrokerDep, owner: OwnerDep, client: ClientDep, body: BodyDep
) -> ResourceVersionOut:
    resource = path.resource
    version = broker.create_resource(
        owner, resource, _secret(_json_model(SecretBody, body)), client_id=client
    )
    return ResourceVersionOut(resource=resource, version=version)


@owner_router.post("/resources" + _PATH + "/rotate")
def rotate_resource(
    path: PathDep, broker: BrokerDep, owner: OwnerDep, client: ClientDep, body: BodyDep
) -> ResourceVersionOut:
    resource = path.resource
    req = _json_model(SecretBody, body)
    version = broker.rotate_resource(
        owner, resource, _secret(req), client_id=client, expected_version=req.expected_version
    )
    return ResourceVersionOut(resource=resource, version=version)


@owner_router.delete("/resources" + _PATH + "/versions/{version}", status_code=204)
def retire_resource_version(
    path: PathDep, version: int, broker: BrokerDep, owner: OwnerDep, client: ClientDep
) -> Response:
    broker.retire_resource_version(owner, path.resource, version, client_id=client)
    return Response(status_code=204)


@owner_router.delete("/resources" + _PATH, status_code=204)
def delete_resource(
    path: PathDep, broker: BrokerDep, owner: OwnerDep, client: ClientDep
) -> Response:
    broker.delete_resource(owner, path.resource, client_id=client)
    return Response(status_code=204)


@owner_router.put("/policies" + _PATH)
def set_policy(
    path: PathDep,
    broker: BrokerDep,
    owner: OwnerDep,
    client: ClientDep,
    body: BodyDep,
    expected_version: Annotated[int | None, Query(ge=0)] = None,
) -> PolicyOut:
    resource = path.resource
    policy = release_policy_from_obj(load_json(body))
    broker.set_policy(owner, resource, policy, client_id=client, expected_version=expected_version)
    return _policy_out(broker, owner, resource, None, client)


@owner_router.get("/policies" + _PATH)
def get_policy(
    path: PathDep,
    broker: BrokerDep,
    owner: OwnerDep,
    client: ClientDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> PolicyOut:
    return _policy_out(broker, owner, path.resource, version, client)


@owner_router.delete("/policies" + _PATH + "/versions/{version}", status_code=204)
def retire_policy_version(
    path: PathDep, version: int, broker: BrokerDep, owner: OwnerDep, client: ClientDep
) -> Response:
    broker.retire_policy_version(owner, path.resource, version, client_id=client)
    return Response(status_code=204)


@owner_router.get("/revocations")
def list_revocations(broker: BrokerDep, owner: OwnerDep, client: ClientDep
                     ) -> list[dict[str, Any]]:
    return [r.to_dict() for r in broker.revocations(owner, client_id=client)]


@owner_router.post("/revocations", status_code=201)
def add_revocation(broker: BrokerDep, owner: OwnerDep, client: ClientDep, body: BodyDep
                   ) -> dict[str, Any]:
    return broker.revoke(owner, _json_model(RevocationIn, body), client_id=client).to_dict()


@owner_router.delete("/revocations/{kind}/{value}", status_code=204)
def remove_revocation(kind: str, value: str, broker: BrokerDep, owner: OwnerDep,
                      client: ClientDep) -> Response:
    broker.unrevoke(owner, kind, value, client_id=client)
    return Response(status_code=204)


@owner_router.get("/decisions")
def decisions(
    broker: BrokerDep,
    owner: OwnerDep,
    client: ClientDep,
    resource: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    found = broker.decisions(owner, resource=resource, limit=limit, client_id=client)
    return [d.to_dict() for d in found]


def _policy_out(
    broker: BrokerDep, owner: str, resource: str, version: int | None, client: str
) -> PolicyOut:
    record, policy, versions = broker.get_policy(owner, resource, version, client_id=client)
    return PolicyOut(
        resource=resource,
        version=record.version,
        versions=list(versions),
        digest=record.digest,
        policy=policy.model_dump(mode="json"),
    )

