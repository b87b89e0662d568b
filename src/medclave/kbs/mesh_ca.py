"""The mesh CA, hosted by the broker: workload certificates only for attested workloads.

Why here (docs/continuous-trust.md, "Attested micro-segmentation"): the broker already verifies
evidence with every platform's verifier, keeps each tenant's appraisal policies and revocation
lists, and records every decision. A certificate for ``medclave://TENANT/ROLE/NAME`` is issued
(``POST /kbs/v1/mesh/certificate``) only when

1. the request's nonce is one the broker issued and is spent now (like a release);
2. the evidence verifies over that nonce, and its runtime binds the requested key
   (``tls_key`` = SHA-256 of its SPKI) and identity (``mesh_identity``): ``mesh.key_not_bound``;
3. the evidence's identities are not on the tenant's revocation list (``kbs.revoked``);
4. it passes the tenant's release policy for the role, the policy of the resource
   ``kbs:///TENANT/mesh/ROLE`` (owner API, versioned, like any release policy; none set:
   ``kbs.policy_missing``, so nothing is issued by default).

Every issuance and refusal is a recorded decision (action ``mesh_issue``). The deny list
(``GET /kbs/v1/mesh/revocations/TENANT``) is the tenant's revocation list; only a caller holding
a certificate of that tenant may read it.

The broker's own certificate (role ``broker``) it issues to itself, without evidence: the broker
is the mesh's root of trust, as it is for keys.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.attestation import Check
from medclave.errors import AttestationError, InputError, KbsError, MedclaveError, MeshError
from medclave.kbs.checks import appraise
from medclave.kbs.deps import BodyDep, BrokerDep, ClientDep, rate_limit
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.names import ResourceName
from medclave.kbs.revocation import first_match, identities
from medclave.kbs.service import KeyBroker
from medclave.mesh.certs import MeshCA, new_key, read_csr, spki_sha256
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.mesh.tls import DenyList, MeshTls, Revoked
from medclave.mesh.workload import Issued, Renewer
from medclave.protocol.evidence import EvidenceBundle
from medclave.serving import MeshServing, mesh_peer

MESH_TYPE = "mesh"  # resource type of a role's issuance policy: kbs:///TENANT/mesh/ROLE
# What a peer without an allowed identity may reach on the broker: the CA's bootstrap, the
# owner API (its own bearer tokens; operators hold no workload certificate) and health.
OPEN_PATHS = ("/kbs/v1/challenge", "/kbs/v1/mesh/", "/kbs/v1/owner/", "/healthz", "/readyz")


class MeshConfig(BaseModel):
    """The broker's ``mesh_file`` (TOML): its own identity, the segmentation policy file
    (relative to this file), and how long workload certificates live."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    identity: str
    policy: Path
    cert_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    denylist_seconds: float = Field(default=30.0, gt=0, le=3600)

    @classmethod
    def load(cls, path: Path) -> MeshConfig:
        try:
            doc = cls.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InputError("config.invalid", f"mesh file {path.name}: {exc}") from exc
        return doc.model_copy(update={"policy": path.parent / doc.policy})


class CertificateRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    evidence: EvidenceBundle
    csr: str = Field(max_length=8192)


class MeshIssuer:
    """Issuance and the deny list (the module docstring)."""

    def __init__(self, broker: KeyBroker, ca: MeshCA, *, lifetime: timedelta) -> None:
        self.broker = broker
        self.ca = ca
        self.lifetime = lifetime

    def issue(self, request: CertificateRequest, client_id: str) -> str:
        """The PEM certificate, or the refusal (recorded either way)."""
        broker = self.broker
        now = broker.now()
        resource, digest = "", ""
        checks: tuple[Check, ...] = ()
        try:
            identity, key = read_csr(request.csr)
            name = ResourceName.of(identity.tenant, MESH_TYPE, identity.role)
            resource = str(name)
            try:
                verification = broker.attested(request.nonce, request.evidence, now)
            except AttestationError as exc:
                checks = tuple(exc.checks)
                raise
            checks, digest = verification.checks, verification.evidence_digest
            runtime = request.evidence.runtime
            if (runtime.get("tls_key") != spki_sha256(key)
                    or runtime.get("mesh_identity") != identity.uri):
                raise MeshError("mesh.key_not_bound", "the evidence binds another key or "
                                                      "identity than the request's")
            found = identities(verification, request.evidence)
            hit = first_match(broker.store.revocations(identity.tenant), found)
            if hit is not None:
                raise KbsError("kbs.revoked", f"{hit.kind} {hit.value[:24]} revoked")
            policy = ReleasePolicy.model_validate_json(broker.store.policy_version(name).document)
            appraise(verification, policy, runtime, now, evidence_time=now - broker.nonce_ttl)
            cert = self.ca.issue(identity, key, claims=found, now=now, lifetime=self.lifetime)
        except MedclaveError as exc:
            broker.record("mesh_issue", resource, client_id, exc, exc.detail,
                          evidence_sha256=digest, checks=checks)
            raise
        broker.record("mesh_issue", resource, client_id, None,
                      f"issued {identity} serial {cert.serial_number:x}",
                      evidence_sha256=digest, checks=checks)
        return cert.public_bytes(Encoding.PEM).decode()

    def revoked(self, tenant: str) -> Revoked:
        found: dict[str, set[str]] = {}
        for entry in self.broker.store.revocations(tenant):
            found.setdefault(entry.kind, set()).add(entry.value)
        return {k: frozenset(v) for k, v in found.items()}

    def own_certificate(self, identity: WorkloadId) -> Issued:
        """The broker's own (module docstring): a fresh key, no evidence, no claims."""
        key = new_key()
        now = self.broker.now()
        cert = self.ca.issue(identity, key.public_key(), claims={}, now=now,
                             lifetime=self.lifetime)
        return Issued(key, cert.public_bytes(Encoding.PEM), cert.not_valid_after_utc)


@dataclass
class BrokerMesh:
    """What the broker runs with mutual TLS: the issuer, its own TLS, renewal, deny list."""

    issuer: MeshIssuer
    tls: MeshTls
    renewer: Renewer
    deny: DenyList

    @classmethod
    def build(cls, broker: KeyBroker, config: MeshConfig, data_dir: Path) -> BrokerMesh:
        identity = WorkloadId.parse(config.identity)
        if identity.role != "broker":
            raise InputError("config.invalid", "the broker's mesh identity has role broker")
        policy = SegmentationPolicy.load(config.policy)
        ca = MeshCA.load_or_create(data_dir, identity.tenant, now=broker.now())
        issuer = MeshIssuer(broker, ca, lifetime=timedelta(seconds=config.cert_seconds))
        deny = DenyList(lambda: issuer.revoked(identity.tenant),
                        interval=config.denylist_seconds)
        deny.refresh()
        tls = MeshTls(identity, ca_pem=ca.pem, policy=policy, deny=deny)
        renewer = Renewer(tls, lambda: issuer.own_certificate(identity))
        renewer.renew_once()
        return cls(issuer, tls, renewer, deny)

    def serving(self) -> MeshServing:
        return MeshServing(self.tls, OPEN_PATHS)

    def start(self) -> None:
        self.renewer.start()
        self.deny.start()

    def stop(self) -> None:
        self.renewer.stop()
        self.deny.stop()


def get_issuer(request: Request) -> MeshIssuer:
    issuer = getattr(request.app.state, "mesh_issuer", None)
    if not isinstance(issuer, MeshIssuer):
        raise KbsError("kbs.not_found", "this broker runs no mesh CA")
    return issuer


IssuerDep = Annotated[MeshIssuer, Depends(get_issuer)]
mesh_router = APIRouter(prefix="/kbs/v1/mesh", dependencies=[Depends(rate_limit)])


@mesh_router.post("/certificate")
def certificate(issuer: IssuerDep, broker: BrokerDep, client: ClientDep,
                body: BodyDep) -> dict[str, str]:
    try:
        request = CertificateRequest.model_validate_json(body)
    except ValidationError as exc:
        error = InputError("input.malformed", "not a certificate request")
        broker.record("mesh_issue", "", client, error, error.detail)
        raise error from exc
    return {"certificate": issuer.issue(request, client),
            "ca": issuer.ca.pem.decode()}


@mesh_router.get("/ca")
def ca_certificate(issuer: IssuerDep) -> dict[str, str]:
    """The trust anchor (public); workloads are configured with it out of band and may compare."""
    return {"ca": issuer.ca.pem.decode()}


@mesh_router.get("/revocations/{tenant}")
def revocations(issuer: IssuerDep, request: Request, tenant: str) -> dict[str, object]:
    peer = mesh_peer(request)
    if peer is None or peer.identity.tenant != tenant:
        raise MeshError("mesh.peer_unauthenticated", "the deny list is for the tenant's workloads")
    return {"tenant": tenant, "revoked": [{"kind": kind, "value": value}
                                         for kind, values in sorted(issuer.revoked(tenant).items())
                                         for value in sorted(values)]}
