"""FHIR R4 ingest: Bundles and single resources to the records retrieval indexes and authorizes.

What is read (https://hl7.org/fhir/R4/bundle.html, https://hl7.org/fhir/R4/references.html):

- A ``Bundle`` of type ``transaction``, ``batch``, ``collection`` or ``searchset``, or one
  resource of a supported type. Entries of other types (Claim, Provenance...) are counted as
  skipped, never stored.
- Every supported resource is validated with ``fhir.resources`` (the R4B models: R4B changed
  none of the resources read here); the first invalid one refuses the whole request with
  ``records.invalid_resource`` and its path (``Bundle.entry[3].resource.valueQuantity.value``),
  so nothing of a request is half-stored.
- References: ``urn:uuid:`` full URLs (R4 §2.36.4.1, transactions), literal ``Type/id`` and
  absolute URLs ending in it, and conditional references ``Type?identifier=SYSTEM|VALUE``
  (R4 §3.1.0.4.4), resolved against the identifiers of the bundle's own resources and
  otherwise kept as written (Synthea's practitioners live in another bundle): a conditional
  reference to a practitioner is the practitioner's key for care relationships.
- Per resource: the patient it is about, its encounter, its category (first category code, else
  the resource type), its date, ``meta.security`` codes, and, for Encounter and CareTeam, the
  practitioners taking part (the care relationships Cedar's care-team rules need). Consent
  resources are kept for :func:`medclave.auth.consent.consent_from_fhir`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from medclave.errors import InputError, RecordsError

SUPPORTED: Final = frozenset({
    "Patient", "Encounter", "Condition", "Observation", "DiagnosticReport", "MedicationRequest",
    "Immunization", "Procedure", "AllergyIntolerance", "CarePlan", "CareTeam",
    "DocumentReference", "Consent",
})
BUNDLE_TYPES: Final = frozenset({"transaction", "batch", "collection", "searchset"})
MAX_ENTRIES: Final = 20_000
MAX_NOTE_BYTES: Final = 256 * 1024
MAX_ID: Final = 64  # FHIR ids: [A-Za-z0-9\-\.]{1,64}
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")
_LITERAL = re.compile(r"(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?\Z")
_CONDITIONAL = re.compile(r"([A-Z][A-Za-z]+)\?identifier=([^&]{1,512})\Z")
_PATIENT_PATHS: Final = ("subject", "patient")


@dataclass(frozen=True)
class FhirResource:
    """One ingested resource, with what indexing and authorization need."""

    reference: str  # Type/id
    type: str
    patient: str | None  # Patient/id
    encounter: str | None
    category: str
    date: str | None
    security: tuple[str, ...]
    body: Mapping[str, Any] = field(repr=False, compare=False)
    members: tuple[str, ...] = ()  # practitioner keys (Encounter participants, CareTeam)


@dataclass(frozen=True)
class Parsed:
    resources: tuple[FhirResource, ...]
    skipped: int


def _fail(path: str, why: str) -> RecordsError:
    return RecordsError("records.invalid_resource", f"{path}: {why}", path=path)


def _validate(resource: Mapping[str, Any], path: str) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    kind = resource.get("resourceType")
    try:
        get_fhir_model_class(str(kind)).model_validate(dict(resource))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise _fail(f"{path}.{where}" if where else path, str(first.get("msg", "invalid"))[:200]
                    ) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise _fail(path, f"not a valid {kind}: {type(exc).__name__}") from None


def _code(concepts: Any) -> str | None:
    """The first code of a CodeableConcept or a list of them."""
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(concept, Mapping):
            for coding in concept.get("coding") or ():
                if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                    return str(coding["code"])[:128]
    return None


def _date(resource: Mapping[str, Any]) -> str | None:
    for key in ("effectiveDateTime", "issued", "occurrenceDateTime", "onsetDateTime",
                "recordedDate", "authoredOn", "performedDateTime", "date", "birthDate"):
        value = resource.get(key)
        if isinstance(value, str):
            return value[:32]
    for key in ("period", "effectivePeriod", "performedPeriod"):
        value = resource.get(key)
        if isinstance(value, Mapping) and isinstance(value.get("start"), str):
            return str(value["start"])[:32]
    return None


class _Resolver:
    """Full URLs and identifiers of a bundle's resources, to resolve references against."""

    def __init__(self) -> None:
        self.by_url: dict[str, str] = {}
        self.by_identifier: dict[tuple[str, str], str] = {}

    def add(self, full_url: str | None, reference: str, resource: Mapping[str, Any]) -> None:
        if full_url:
            self.by_url[full_url] = reference
        kind = reference.split("/", 1)[0]
        for ident in resource.get("identifier") or ():
            if isinstance(ident, Mapping) and isinstance(ident.get("value"), str):
                system = ident.get("system") if isinstance(ident.get("system"), str) else ""
                self.by_identifier[(kind, f"{system}|{ident['value']}")] = reference

    def resolve(self, text: Any, path: str) -> str:
        if not isinstance(text, str) or not 0 < len(text) <= 1024:
            raise _fail(path, "a reference is not a string")
        if text in self.by_url:
            return self.by_url[text]
        if text.startswith("urn:uuid:"):
            raise RecordsError("records.reference_unresolved", f"{path}: {text} is not in the "
                               "bundle", path=path)
        cond = _CONDITIONAL.match(text)
        if cond:
            found = self.by_identifier.get((cond.group(1), cond.group(2)))
            return found or text  # kept as written: a key, not a resource we hold
        lit = _LITERAL.match(text)
        if lit:
            return f"{lit.group(1)}/{lit.group(2)}"
        raise RecordsError("records.reference_unresolved", f"{path}: cannot read {text[:80]}",
                           path=path)


def _ref(resolver: _Resolver, value: Any, path: str) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, Mapping) or "reference" not in value:
        return None
    return resolver.resolve(value["reference"], f"{path}.reference")


def _members(resolver: _Resolver, resource: Mapping[str, Any], path: str) -> tuple[str, ...]:
    out: list[str] = []
    key = "individual" if resource.get("resourceType") == "Encounter" else "member"
    for i, participant in enumerate(resource.get("participant") or ()):
        if isinstance(participant, Mapping):
            ref = _ref(resolver, participant.get(key), f"{path}.participant[{i}].{key}")
            if ref is not None and ref.startswith("Practitioner"):
                out.append(ref)
    return tuple(sorted(set(out)))


def _entries(doc: Mapping[str, Any]) -> tuple[list[tuple[str, str | None, Mapping[str, Any]]], int]:
    """``(path, fullUrl, resource)`` of each supported resource, and how many were skipped."""
    if doc.get("resourceType") != "Bundle":
        if doc.get("resourceType") not in SUPPORTED:
            raise _fail("resourceType", f"{str(doc.get('resourceType'))[:40]!r} is not ingested")
        return [(str(doc["resourceType"]), None, doc)], 0
    if doc.get("type") not in BUNDLE_TYPES:
        raise _fail("Bundle.type", f"a bundle of type {str(doc.get('type'))[:40]!r} is not "
                    f"ingested (use one of {sorted(BUNDLE_TYPES)})")
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        raise _fail("Bundle.entry", "not a list")
    if len(entries) > MAX_ENTRIES:
        raise InputError("input.too_large", f"more than {MAX_ENTRIES} entries")
    out: list[tuple[str, str | None, Mapping[str, Any]]] = []
    skipped = 0
    for i, entry in enumerate(entries):
        path = f"Bundle.entry[{i}]"
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            raise _fail(path, "an entry without a resource")
        if resource.get("resourceType") not in SUPPORTED:
            skipped += 1
            continue
        full = entry.get("fullUrl")
        out.append((f"{path}.resource", full if isinstance(full, str) else None, resource))
    return out, skipped


def parse(doc: Any) -> Parsed:
    """Every supported resource of a Bundle or single resource, validated and resolved."""
    if not isinstance(doc, Mapping):
        raise _fail("$", "not a FHIR resource (a JSON object)")
    entries, skipped = _entries(doc)
    resolver = _Resolver()
    refs: list[str] = []
    for path, full, resource in entries:
        _validate(resource, path)
        rid = resource.get("id")
        if rid is None and full and full.startswith("urn:uuid:"):
            rid = full.removeprefix("urn:uuid:")  # a transaction's new resource: its uuid
        if not isinstance(rid, str) or not _ID.match(rid):
            raise _fail(f"{path}.id", "a resource needs an id (or a urn:uuid: fullUrl)")
        reference = f"{resource['resourceType']}/{rid}"
        if reference in refs:
            raise _fail(f"{path}.id", f"{reference} appears twice")
        refs.append(reference)
        resolver.add(full, reference, resource)
    out: list[FhirResource] = []
    for (path, _, resource), reference in zip(entries, refs, strict=True):
        kind = str(resource["resourceType"])
        if kind == "Patient":
            patient: str | None = reference
        else:
            patient = None
            for key in _PATIENT_PATHS:
                if key in resource:
                    patient = _ref(resolver, resource[key], f"{path}.{key}")
                    break
            if patient is not None and not patient.startswith("Patient/"):
                patient = None  # a group or a device subject: not a patient's record
        encounter = _ref(resolver, resource.get("encounter"), f"{path}.encounter")
        if encounter is None and isinstance(resource.get("context"), Mapping):
            encounter = _ref(resolver, resource["context"].get("encounter"),
                             f"{path}.context.encounter")
        security = tuple(sorted({str(c["code"])[:64] for c in
                                 (resource.get("meta") or {}).get("security") or ()
                                 if isinstance(c, Mapping) and isinstance(c.get("code"), str)}))
        members = _members(resolver, resource, path) if kind in ("Encounter", "CareTeam") else ()
        out.append(FhirResource(
            reference=reference, type=kind, patient=patient, encounter=encounter,
            category=_code(resource.get("category")) or kind, date=_date(resource),
            security=security, body=resource, members=members))
    return Parsed(tuple(out), skipped)


def notes(resource: Mapping[str, Any]) -> list[str]:
    """The plain-text notes a DocumentReference carries (base64 ``text/*`` attachments)."""
    texts: list[str] = []
    contents: Sequence[Any] = resource.get("content") or ()
    for content in contents:
        attachment = content.get("attachment") if isinstance(content, Mapping) else None
        if not isinstance(attachment, Mapping) or not isinstance(attachment.get("data"), str):
            continue
        if not str(attachment.get("contentType", "text/plain")).startswith("text/"):
            continue
        data: str = attachment["data"]
        if len(data) > MAX_NOTE_BYTES * 4 // 3 + 4:
            raise InputError("input.too_large", "a note is larger than 256 KiB")
        try:
            texts.append(base64.b64decode(data, validate=True).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError):
            raise _fail("DocumentReference.content.attachment.data",
                        "not base64 of UTF-8 text") from None
    return texts
