"""Who may see which record: FHIR care relationships as the Cedar entities the hospital's
policies read, and every retrieval candidate decided by the same :class:`Authorizer` as every
other request (``auth/policies/*.cedar``: care team, patient self, researcher de-identified only,
consent denials, tenant isolation, break-glass).

The entities, per tenant, from what was ingested:

- ``Patient::"ID"`` with its care teams: one team per patient for the practitioners of their
  encounters (``Encounter.participant.individual``: the clinicians who actually treated them),
  and each FHIR ``CareTeam`` whose subject they are; and its ``Consent`` (the patient's active
  FHIR Consent resources merged by :func:`medclave.auth.consent.consent_from_fhir`).
- ``Document::"Type/ID"`` per resource: tenant, patient, category (first category code, else
  the resource type), ``meta.security`` codes as security labels, and identifiable unless
  labelled ``ANONYED`` (HL7 v3 ObservationValue: anonymized).

A user is linked to a FHIR identity (``fhirUser``, SMART App Launch §"fhirUser" claim: a
``Patient/ID`` for patients, a ``Practitioner`` reference for clinicians) by the token's
``fhirUser`` claim or the deployment's user-link file; a clinician is a member of the teams
their practitioner reference appears in. No link, no membership: policies then deny.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.auth.consent import consent_from_fhir
from medclave.auth.entities import (
    CareTeam,
    Document,
    Entity,
    EntityStore,
    Patient,
    Tenant,
    User,
)
from medclave.errors import InputError
from medclave.records.fhir import FhirResource

MAX_LINKS_BYTES: Final = 4 * 1024 * 1024
DEIDENTIFIED_LABEL: Final = "ANONYED"
# The policy that allowed a document, as the reason the answer and the audit entry give.
REASONS: Final = {
    "clinician-care-team-retrieve": "care-team",
    "patient-own-documents": "self",
    "clinician-break-glass-documents": "break-glass",
    "researcher-deidentified-documents": "de-identified",
}


@dataclass(frozen=True)
class Caller:
    """The verified caller, as the enclave's door established it."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    fhir_user: str | None = None


@dataclass(frozen=True)
class ResourceMeta:
    reference: str
    type: str
    patient: str  # Patient/ID
    category: str
    security: tuple[str, ...]
    members: tuple[str, ...] = ()
    consent: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "type": self.type, "patient": self.patient,
                "category": self.category, "security": list(self.security),
                "members": list(self.members), "consent": self.consent}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ResourceMeta:
        return cls(str(doc["reference"]), str(doc["type"]), str(doc["patient"]),
                   str(doc["category"]), tuple(doc["security"]), tuple(doc["members"]),
                   doc.get("consent"))

    @classmethod
    def of(cls, res: FhirResource) -> ResourceMeta:
        assert res.patient is not None
        consent = None
        if res.type == "Consent":
            # Its patient as resolved at ingest (a transaction says urn:uuid:...).
            consent = {**res.body, "patient": {"reference": res.patient}}
        return cls(res.reference, res.type, res.patient, res.category, res.security,
                   res.members, consent)


def load_links(path: Path | None) -> dict[str, str]:
    """The user-link file: a JSON object ``{"SUBJECT": "Patient/ID" | "Practitioner…"}``."""
    if path is None:
        return {}
    try:
        if path.stat().st_size > MAX_LINKS_BYTES:
            raise InputError("config.invalid", f"{path.name} is larger than 4 MiB")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError("config.invalid", f"cannot read {path.name}: {exc}") from exc
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in doc.items()):
        raise InputError("config.invalid", f"{path.name}: an object of subject -> fhirUser")
    return doc


def _bare(reference: str) -> str:
    return reference.split("/", 1)[1] if reference.startswith("Patient/") else reference


class TenantAccess:
    """A tenant's authorization state: resource metadata and the entity store built from it."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.meta: dict[str, ResourceMeta] = {}
        self._store: EntityStore | None = None
        self._teams_of_member: dict[str, set[str]] = {}

    def update(self, metas: Sequence[ResourceMeta]) -> None:
        for m in metas:
            self.meta[m.reference] = m
        self._store = None

    def patients(self) -> set[str]:
        return {m.patient for m in self.meta.values()}

    def entities(self, authorizer: Authorizer) -> EntityStore:
        if self._store is not None:
            return self._store
        teams: dict[str, set[str]] = {}  # patient -> team ids
        members: dict[str, set[str]] = {}  # member key -> team ids
        consents: dict[str, list[Mapping[str, Any]]] = {}
        patients: set[str] = set()
        for m in self.meta.values():
            patients.add(m.patient)
            if m.type in ("Encounter", "CareTeam") and m.members:
                team = f"{m.patient}#encounters" if m.type == "Encounter" else m.reference
                teams.setdefault(m.patient, set()).add(team)
                for key in m.members:
                    members.setdefault(key, set()).add(team)
            if m.consent is not None:
                consents.setdefault(m.patient, []).append(m.consent)
        entities: list[Entity] = [Tenant(id=self.tenant)]
        for team in sorted({t for ts in teams.values() for t in ts}):
            entities.append(CareTeam(id=team, tenant=self.tenant))
        for patient in sorted(patients):
            consent_id = None
            if patient in consents:
                consent = consent_from_fhir(consents[patient], tenant=self.tenant,
                                            patient=_bare(patient))
                entities.append(consent)
                consent_id = consent.id
            entities.append(Patient(id=_bare(patient), tenant=self.tenant,
                                    care_teams=tuple(sorted(teams.get(patient, ()))),
                                    consent=consent_id))
        self._teams_of_member = members
        self._store = EntityStore(entities, schema=authorizer.policies.schema)
        return self._store

    def user(self, caller: Caller, authorizer: Authorizer) -> User:
        self.entities(authorizer)
        link = caller.fhir_user or ""
        patient = _bare(link) if link.startswith("Patient/") else None
        teams = sorted(self._teams_of_member.get(link, ())) if link.startswith(
            "Practitioner") else []
        return User(id=caller.subject, tenant=caller.tenant, roles=caller.roles,
                    care_teams=tuple(teams), patient=patient)

    def document(self, reference: str) -> Document:
        m = self.meta[reference]
        return Document(id=reference, tenant=self.tenant, patient=_bare(m.patient),
                        category=m.category, security_labels=m.security,
                        identifiable=DEIDENTIFIED_LABEL not in m.security)


@dataclass(frozen=True)
class Allowed:
    reference: str
    reason: str
    policies: tuple[str, ...]


def authorize(authorizer: Authorizer, trail: Any, access: TenantAccess, caller: Caller,
              references: Sequence[str], *, now: datetime, grant: str | None) -> dict[str, Allowed]:
    """The references ``caller`` may retrieve, each with why. ``trail`` collects the
    authorizer's decision records (its sink), one per candidate, in order."""
    if not references:
        return {}
    user = access.user(caller, authorizer)
    docs = [access.document(r) for r in references]
    records: list[DecisionRecord]
    with trail.collect() as records:
        authorizer.filter_documents(user, docs, entities=access.entities(authorizer), now=now,
                                    grant=grant)
    out: dict[str, Allowed] = {}
    for ref, record in zip(references, records, strict=True):
        if record.decision == "allow" and not record.errors:
            reason = next((REASONS[r] for r in record.reasons if r in REASONS), "policy")
            out[ref] = Allowed(ref, reason, tuple(record.reasons))
    return out
