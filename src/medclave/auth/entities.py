"""The Cedar entities Medclave authorizes over, and the store that holds a tenant's directory.

Entity types (see ``policies/schema.json``): ``Tenant``; ``CareTeam`` (tenant); ``User`` (tenant,
roles, optional linked ``patient``; a member of its care teams); ``Patient`` (tenant, care teams,
optional ``consent``); ``Document`` (tenant, patient, category, security labels, identifiable);
``Model`` (tenant, roles allowed to call it); ``Consent`` (one per patient: the union of the
patient's active FHIR Consent deny provisions).

The typed classes below build Cedar's JSON entity format; :class:`EntityStore` loads a directory
file once (validated against the schema) and adds the caller per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

import cedarpy

from medclave.auth.tokens import Identity
from medclave.errors import InputError
from medclave.util.lru import Lru

MAX_ENTITIES_BYTES: Final = 32 * 1024 * 1024
_UID_TEXT = re.compile(r'([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)::"([^"\\]*)"\Z')


class EntityUid(NamedTuple):
    """A Cedar entity id. A named tuple: hashed and compared in C, thousands of times a request."""

    type: str
    id: str

    @classmethod
    def parse(cls, value: str | EntityUid | Mapping[str, Any], *, default_type: str = "") -> EntityUid:
        """From ``Type::"id"``, ``{"type", "id"}`` (Cedar's JSON form), or a bare id."""
        if isinstance(value, EntityUid):
            return value
        if isinstance(value, Mapping):
            raw = value.get("__entity", value)
            t = raw.get("type") if isinstance(raw, Mapping) else None
            i = raw.get("id") if isinstance(raw, Mapping) else None
            if isinstance(t, str) and isinstance(i, str) and t:
                return cls(t, i)
            raise InputError("input.malformed", "an entity reference needs 'type' and 'id'")
        if isinstance(value, str):
            m = _UID_TEXT.match(value)
            if m:
                return cls(m.group(1), m.group(2))
            if default_type and "::" not in value and value:
                return cls(default_type, value)
        raise InputError("input.malformed", f"not an entity reference: {str(value)[:80]!r}")

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "id": self.id}

    def ref(self) -> dict[str, dict[str, str]]:
        """An entity-typed attribute value (Cedar JSON ``__entity`` escape)."""
        return {"__entity": self.to_json()}

    def __str__(self) -> str:
        return f"{self.type}::{json.dumps(self.id)}"


class Entity(Protocol):
    @property
    def uid(self) -> EntityUid: ...

    def to_cedar(self) -> dict[str, Any]: ...


def _entity(uid: EntityUid, attrs: dict[str, Any], parents: Iterable[EntityUid] = ()) -> dict[str, Any]:
    return {"uid": uid.to_json(), "attrs": attrs, "parents": [p.to_json() for p in parents]}


def _uid(kind: str, value: str | EntityUid) -> EntityUid:
    return EntityUid.parse(value, default_type=kind)


@dataclass(frozen=True, kw_only=True)
class Tenant:
    id: str

    @property
    def uid(self) -> EntityUid:
        return EntityUid("Tenant", self.id)

    def to_cedar(self) -> dict[str, Any]:
        return _entity(self.uid, {})


@dataclass(frozen=True, kw_only=True)
class CareTeam:
    id: str
    tenant: str

    @property
    def uid(self) -> EntityUid:
        return EntityUid("CareTeam", self.id)

    def to_cedar(self) -> dict[str, Any]:
        return _entity(self.uid, {"tenant": EntityUid("Tenant", self.tenant).ref()})


@dataclass(frozen=True, kw_only=True)
class User:
    id: str
    tenant: str
    roles: tuple[str, ...] = ()
    care_teams: tuple[str, ...] = ()
    patient: str | None = None  # for patients: the Patient record this account belongs to

    @property
    def uid(self) -> EntityUid:
        return EntityUid("User", self.id)

    def to_cedar(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "tenant": EntityUid("Tenant", self.tenant).ref(),
            "roles": sorted(set(self.roles)),
        }
        if self.patient is not None:
            attrs["patient"] = _uid("Patient", self.patient).ref()
        return _entity(self.uid, attrs, (_uid("CareTeam", t) for t in self.care_teams))


@dataclass(frozen=True, kw_only=True)
class Patient:
    id: str
    tenant: str
    care_teams: tuple[str, ...] = ()
    consent: str | None = None

    @property
    def uid(self) -> EntityUid:
        return EntityUid("Patient", self.id)

    def to_cedar(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "tenant": EntityUid("Tenant", self.tenant).ref(),
            "care_teams": [_uid("CareTeam", t).ref() for t in self.care_teams],
        }
        if self.consent is not None:
            attrs["consent"] = _uid("Consent", self.consent).ref()
        return _entity(self.uid, attrs)


@dataclass(frozen=True, kw_only=True)
class Document:
    id: str
    tenant: str
    patient: str
    category: str
    security_labels: tuple[str, ...] = ()
    identifiable: bool = True

    @property
    def uid(self) -> EntityUid:
        return EntityUid("Document", self.id)

    def to_cedar(self) -> dict[str, Any]:
        return _entity(
            self.uid,
            {
                "tenant": EntityUid("Tenant", self.tenant).ref(),
                "patient": _uid("Patient", self.patient).ref(),
                "category": self.category,
                "security_labels": sorted(set(self.security_labels)),
                "identifiable": self.identifiable,
            },
        )


@dataclass(frozen=True, kw_only=True)
class Model:
    id: str
    tenant: str
    allowed_roles: tuple[str, ...] = ("clinician",)

    @property
    def uid(self) -> EntityUid:
        return EntityUid("Model", self.id)

    def to_cedar(self) -> dict[str, Any]:
        return _entity(
            self.uid,
            {
                "tenant": EntityUid("Tenant", self.tenant).ref(),
                "allowed_roles": sorted(set(self.allowed_roles)),
            },
        )


@dataclass(frozen=True, kw_only=True)
class Consent:
    id: str
    tenant: str
    patient: str
    active: bool = True
    deny_all: bool = False
    deny_categories: frozenset[str] = field(default_factory=frozenset)
    deny_security_labels: frozenset[str] = field(default_factory=frozenset)

    @property
    def uid(self) -> EntityUid:
        return EntityUid("Consent", self.id)

    def to_cedar(self) -> dict[str, Any]:
        return _entity(
            self.uid,
            {
                "tenant": EntityUid("Tenant", self.tenant).ref(),
                "patient": _uid("Patient", self.patient).ref(),
                "active": self.active,
                "deny_all": self.deny_all,
                "deny_categories": sorted(self.deny_categories),
                "deny_security_labels": sorted(self.deny_security_labels),
            },
        )


def as_cedar(entity: Entity | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(entity, Mapping):
        return dict(entity)
    return entity.to_cedar()


def uid_of(entity: Entity | Mapping[str, Any]) -> EntityUid:
    if isinstance(entity, Mapping):
        return EntityUid.parse(entity.get("uid", {}))
    return entity.uid


def _refs(doc: Mapping[str, Any]) -> tuple[EntityUid, ...]:
    """Entities ``doc`` points at: its parents and entity-typed attributes (also inside sets
    and records). Entity ids were checked when the store or the request was built."""
    out = [EntityUid(p["type"], p["id"]) for p in doc.get("parents", ())]
    stack = list(doc.get("attrs", {}).values())
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            ref = value.get("__entity")
            if ref is not None:
                out.append(EntityUid(ref["type"], ref["id"]))
            else:
                stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return tuple(out)


def _norm(value: Any) -> Any:
    """Order-insensitive form of an attribute value (Cedar sets have no order)."""
    if isinstance(value, list):
        return frozenset(json.dumps(v, sort_keys=True) for v in value)
    return json.dumps(value, sort_keys=True)


class EntityStore:
    """A tenant directory, schema-checked once at load, sliced per request.

    Each request gets a small Cedar entity set: the principal, the resources, and everything
    they reach through attributes and parents (Cedar only ever reads entities reachable that
    way, so the slice decides exactly as the whole directory would). The cost of a decision
    then follows the request, not the size of the hospital's directory.
    """

    def __init__(
        self,
        entities: Iterable[Entity | Mapping[str, Any]],
        *,
        schema: cedarpy.Schema | None = None,
        cache_size: int = 4096,
        keep_parsed_limit: int = 200_000,
    ) -> None:
        self._schema = schema
        self._docs: dict[EntityUid, dict[str, Any]] = {}
        self._json: dict[EntityUid, str] = {}
        self._refs: dict[EntityUid, tuple[EntityUid, ...]] = {}
        for entity in entities:
            doc = as_cedar(entity)
            uid = uid_of(doc)
            if uid in self._docs:
                raise InputError("input.malformed", f"entity {uid} is listed twice")
            self._docs[uid] = doc
        try:
            full = cedarpy.Entities.from_json_str(json.dumps(list(self._docs.values())), schema)
        except ValueError as exc:
            raise InputError("input.malformed", f"entities do not match the schema: {exc}") from exc
        for uid, doc in self._docs.items():
            self._json[uid] = json.dumps(doc)
            self._refs[uid] = _refs(doc)
        # A directory of moderate size stays parsed: requests whose entities are all in it then
        # need no parsing at all. Larger ones are only ever sliced.
        self._full = full if len(self._docs) <= keep_parsed_limit else None
        # Single decisions repeat (the same user, the same record); batches rarely do.
        self._slices: Lru[tuple[EntityUid | User, tuple[EntityUid, ...]], cedarpy.Entities] = (
            Lru(cache_size))

    @classmethod
    def from_file(cls, path: Path, *, schema: cedarpy.Schema | None = None) -> EntityStore:
        try:
            if path.stat().st_size > MAX_ENTITIES_BYTES:
                raise InputError("input.too_large", f"{path.name} is larger than 32 MiB")
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise InputError("input.malformed", f"cannot read entities {path.name}: {exc}") from exc
        if not isinstance(doc, list) or not all(isinstance(e, Mapping) for e in doc):
            raise InputError("input.malformed", "an entities file is a JSON list of entities")
        return cls(doc, schema=schema)

    def __len__(self) -> int:
        return len(self._docs)

    def extended(self, entities: Iterable[Entity | Mapping[str, Any]]) -> EntityStore:
        """A new store with ``entities`` added (e.g. documents as a retrieval index ingests
        them), so that later requests find them parsed. Entities already present are refused."""
        return EntityStore([*self._docs.values(), *entities], schema=self._schema)

    def get(self, uid: EntityUid) -> Mapping[str, Any] | None:
        return self._docs.get(uid)

    def user_for(self, identity: Identity) -> User:
        """The principal for a verified identity: tenant and roles from the token, care teams
        and patient link from the directory, and only when the directory agrees on the tenant
        (so a directory mistake cannot carry a user across hospitals)."""
        record = self._docs.get(EntityUid("User", identity.subject))
        care_teams: tuple[str, ...] = ()
        patient: str | None = None
        if record is not None:
            attrs = record.get("attrs", {})
            tenant = EntityUid.parse(attrs["tenant"]) if attrs.get("tenant") else None
            if tenant == EntityUid("Tenant", identity.tenant):
                care_teams = tuple(
                    EntityUid.parse(p).id
                    for p in record.get("parents", [])
                    if EntityUid.parse(p).type == "CareTeam"
                )
                if attrs.get("patient"):
                    patient = EntityUid.parse(attrs["patient"]).id
        return User(
            id=identity.subject,
            tenant=identity.tenant,
            roles=identity.roles,
            care_teams=care_teams,
            patient=patient,
        )

    def _in_directory(self, principal: EntityUid | User) -> bool:
        """Whether the directory already holds this principal exactly (a token's roles may differ
        from the directory's, and then the token's version must be used)."""
        if not isinstance(principal, User):
            return True  # an id: the directory's record, or none (and then policies deny)
        record = self._docs.get(principal.uid)
        if record is None:
            return False
        mine = principal.to_cedar()
        return bool(
            record.get("attrs", {}).keys() == mine["attrs"].keys()
            and all(_norm(record["attrs"][k]) == _norm(v) for k, v in mine["attrs"].items())
            and _norm(record.get("parents", [])) == _norm(mine["parents"])
        )

    def handle_for(
        self,
        principal: EntityUid | User,
        resources: Sequence[EntityUid] = (),
        extra: Sequence[Entity | Mapping[str, Any]] = (),
    ) -> cedarpy.Entities:
        """The slice for one request (or one batch sharing a principal).

        ``principal`` is a directory id or a :class:`User` built from a token (which then
        replaces the directory's record); ``extra`` are entities not in the directory, such as
        documents retrieval just found (the directory wins where both have one).
        """
        if not extra and self._full is not None and self._in_directory(principal):
            return self._full
        key = (principal, tuple(resources)) if not extra and len(resources) <= 1 else None
        if key is not None:
            hit = self._slices.get(key)
            if hit is not None:
                return hit
        handle = self._parse(self._reachable(principal, resources, extra))
        if key is not None:
            self._slices.put(key, handle)
        return handle

    def _reachable(
        self,
        principal: EntityUid | User,
        resources: Sequence[EntityUid],
        extra: Sequence[Entity | Mapping[str, Any]],
    ) -> list[str]:
        """The graph walk: the Cedar JSON of every entity the principal and the resources reach
        through attributes and parents, the request's own entities before the directory's."""
        local_json: dict[EntityUid, str] = {}
        local_refs: dict[EntityUid, tuple[EntityUid, ...]] = {}
        for entity in extra:
            uid = uid_of(entity)
            if uid not in self._docs:
                doc = as_cedar(entity)
                local_json[uid], local_refs[uid] = json.dumps(doc), _refs(doc)
        start: list[EntityUid] = list(resources)
        if isinstance(principal, User):
            doc = principal.to_cedar()
            local_json[principal.uid], local_refs[principal.uid] = json.dumps(doc), _refs(doc)
            start.append(principal.uid)
        else:
            start.append(principal)
        parts: list[str] = []
        seen: set[EntityUid] = set()
        while start:
            uid = start.pop()
            if uid in seen:
                continue
            seen.add(uid)
            if uid in local_json:
                parts.append(local_json[uid])
                start.extend(local_refs[uid])
            elif uid in self._docs:
                parts.append(self._json[uid])
                start.extend(self._refs[uid])
            # Absent entities stay absent: a policy reading one errors, and errors deny.
        return parts

    def _parse(self, parts: list[str]) -> cedarpy.Entities:
        """Cedar's entity set from the JSON of each entity, checked against the schema."""
        try:
            return cedarpy.Entities.from_json_str("[" + ",".join(parts) + "]", self._schema)
        except ValueError as exc:
            raise InputError("input.malformed", f"request entities are invalid: {exc}") from exc
