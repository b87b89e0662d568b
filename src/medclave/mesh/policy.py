"""Workload identities and the segmentation policy: which role may reach which.

An identity is a URI, SPIFFE-style but in Medclave's own scheme, carried as the certificate's
only subjectAltName URI (RFC 5280 §4.2.1.6)::

    medclave://TENANT/ROLE/NAME      e.g. medclave://stmary/enclave/llama-1

``TENANT`` is the deployment's trust domain (a key-broker owner name), ``ROLE`` one of
:data:`ROLES`, ``NAME`` the workload's own name. The segmentation policy is a small TOML file
the deployment owns::

    trust_domain = "stmary"
    [[allow]]
    from = "proxy"
    to = "enclave"
    [[allow]]
    from = "enclave"
    to = ["broker", "database"]

Anything not listed is refused (``mesh.peer_not_allowed``); a policy that allows nothing is
refused when it loads (``config.invalid``): an empty file must not read as "no segmentation".
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medclave.errors import InputError, MeshError

SCHEME: Final = "medclave://"
ROLES: Final = ("proxy", "enclave", "broker", "database", "fl-node", "fl-aggregator")
MAX_IDENTITY_CHARS: Final = 255
MAX_POLICY_BYTES: Final = 64 * 1024
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a broker owner name (kbs/names.py)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, order=True)
class WorkloadId:
    tenant: str
    role: str
    name: str

    @classmethod
    def parse(cls, text: str) -> WorkloadId:
        """``medclave://TENANT/ROLE/NAME``; anything else is ``mesh.identity_invalid``."""
        if (not isinstance(text, str) or len(text) > MAX_IDENTITY_CHARS
                or not text.startswith(SCHEME)):
            raise MeshError("mesh.identity_invalid", "an identity is medclave://TENANT/ROLE/NAME")
        parts = text[len(SCHEME):].split("/")
        if len(parts) != 3:
            raise MeshError("mesh.identity_invalid", "an identity is medclave://TENANT/ROLE/NAME")
        return cls.of(*parts)

    @classmethod
    def of(cls, tenant: str, role: str, name: str) -> WorkloadId:
        if not _TENANT.fullmatch(tenant):
            raise MeshError("mesh.identity_invalid", "tenant: lower-case letters, digits, '-'")
        if role not in ROLES:
            raise MeshError("mesh.identity_invalid", f"role is one of {', '.join(ROLES)}")
        if not _NAME.fullmatch(name):
            raise MeshError("mesh.identity_invalid", "name: letters, digits, '.', '_', '-'")
        return cls(tenant, role, name)

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.tenant}/{self.role}/{self.name}"

    def __str__(self) -> str:
        return self.uri


class _Edge(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    source: str = Field(alias="from")
    to: tuple[str, ...]

    @field_validator("to", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


class _PolicyFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    trust_domain: str
    allow: tuple[_Edge, ...] = ()


class SegmentationPolicy:
    """Allowed (from role, to role) edges within one trust domain."""

    def __init__(self, trust_domain: str, edges: frozenset[tuple[str, str]]) -> None:
        if not _TENANT.fullmatch(trust_domain):
            raise InputError("config.invalid", "trust_domain is a tenant name")
        if not edges:
            raise InputError("config.invalid", "the segmentation policy allows nothing; "
                                               "list the allowed edges")
        for source, target in edges:
            for role in (source, target):
                if role not in ROLES:
                    raise InputError("config.invalid", f"unknown role {role!r} in the "
                                                       f"segmentation policy")
            if source == target:
                raise InputError("config.invalid", f"{source} -> {source}: a role reaching "
                                                   "itself is lateral movement; not allowed")
        self.trust_domain = trust_domain
        self.edges = edges

    @classmethod
    def parse(cls, text: str) -> SegmentationPolicy:
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise InputError("config.invalid", "segmentation policy too large")
        try:
            doc = _PolicyFile.model_validate(tomllib.loads(text))
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InputError("config.invalid", f"segmentation policy: {exc}") from exc
        edges = frozenset((edge.source, to) for edge in doc.allow for to in edge.to)
        return cls(doc.trust_domain, edges)

    @classmethod
    def load(cls, path: Path) -> SegmentationPolicy:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError("config.invalid", f"segmentation policy unreadable: {exc}") from exc
        return cls.parse(text)

    def may_reach(self, source: WorkloadId, target_role: str) -> bool:
        return source.tenant == self.trust_domain and (source.role, target_role) in self.edges

    def check(self, peer: WorkloadId, *, me: WorkloadId, inbound: bool) -> None:
        """Raise ``mesh.peer_not_allowed`` unless the policy lists this edge: a peer
        connecting to me (``inbound``), or me connecting to the peer."""
        if peer.tenant != self.trust_domain or me.tenant != self.trust_domain:
            raise MeshError("mesh.peer_not_allowed", f"{peer} is outside trust domain "
                                                     f"{self.trust_domain}")
        source, target = (peer, me) if inbound else (me, peer)
        if (source.role, target.role) not in self.edges:
            raise MeshError("mesh.peer_not_allowed",
                            f"{source.role} may not reach {target.role} ({peer})")
