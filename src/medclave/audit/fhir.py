"""Audit entries as FHIR R4 AuditEvent resources, shaped after IHE BALP (Basic Audit Log Patterns).

One entry becomes one AuditEvent, in the BALP pattern for a RESTful operation on patient data:

- ``agent``: the user (``v3-ParticipationType#IRCP``, the requestor, by tenant pseudonym) and the
  AI device (``DCM#110150`` Application, the model by digest);
- ``entity``: the patient (``audit-entity-type#1`` / ``object-role#1``, by pseudonym), one entity
  per retrieved document (``#2`` System Object / ``object-role#4`` Domain Resource, by its
  commitment) and the transaction (BALP ``XrequestId`` entity type) whose ``detail`` carries the
  model digest, the log origin and index, the engine build, parameters and commitments.

It claims no BALP profile (no ``meta.profile``): the identifiers are pseudonyms and commitments,
not resolvable references, which is the point. The tenant maps them back with its key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Any

from medclave.audit.entry import AuditEntry
from medclave.crypto.canonical import canonical_json

_AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_RESTFUL = "http://hl7.org/fhir/restful-interaction"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _ident(system: str, value: str) -> dict[str, Any]:
    return {"identifier": {"system": system, "value": value}}


def _detail(kind: str, value: str) -> dict[str, str]:
    return {"type": kind, "valueString": value}


def resource_id(origin: str, index: int) -> str:
    """A FHIR id (``[A-Za-z0-9.-]{1,64}``) unique per log and index."""
    return f"mc-{hashlib.sha256(origin.encode()).hexdigest()[:16]}-{index}"


def audit_event(entry: AuditEntry, index: int, *, origin: str) -> dict[str, Any]:
    tenant = f"urn:medclave:tenant:{entry.tenant}"
    allowed = entry.authorization.decision == "allow"
    details = [
        _detail("model_digest", f"sha256:{entry.model_digest}"),
        _detail("log_origin", origin),
        _detail("log_index", str(index)),
        _detail("engine_build", entry.engine_build),
        _detail("evidence_digest", f"sha256:{entry.evidence_digest}"),
        _detail("attestation_status", entry.attestation.status),
        _detail("action", entry.action),
    ]
    if entry.authorization.policies:
        details.append(_detail("policies", " ".join(entry.authorization.policies)))
    if entry.params is not None:
        details.append({"type": "params", "valueBase64Binary": base64.b64encode(
            canonical_json(entry.params.model_dump(mode="json"))).decode()})
    if entry.prompt is not None:
        details.append(_detail("prompt_commitment", entry.prompt))
    if entry.answer is not None:
        details.append(_detail("answer_commitment", entry.answer))
    entities: list[dict[str, Any]] = []
    if entry.patient is not None:
        entities.append({
            "what": _ident(f"{tenant}:patient-pseudonym", entry.patient),
            "type": _coding(_ENTITY_TYPE, "1", "Person"),
            "role": _coding(_OBJECT_ROLE, "1", "Patient"),
        })
    for doc in entry.documents:
        entities.append({
            "what": _ident(f"{tenant}:document-commitment", doc),
            "type": _coding(_ENTITY_TYPE, "2", "System Object"),
            "role": _coding(_OBJECT_ROLE, "4", "Domain Resource"),
        })
    entities.append({
        "what": _ident("urn:medclave:request-id", entry.request_id),
        "type": _coding(_BALP_ENTITY, "XrequestId", "X-Request-Id"),
        "detail": details,
    })
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": resource_id(origin, index),
        "type": _coding(_AUDIT_TYPE, "rest", "RESTful Operation"),
        "subtype": [_coding(_RESTFUL, "operation", "operation")],
        "action": "E",
        "recorded": entry.time,
        "outcome": "0" if allowed else "4",
        "outcomeDesc": f"{entry.authorization.decision}: {entry.authorization.reason}",
        "agent": [
            {
                "type": {"coding": [_coding(_PARTICIPATION, "IRCP", "information recipient")]},
                "who": _ident(f"{tenant}:user-pseudonym", entry.user),
                "requestor": True,
            },
            {
                "type": {"coding": [_coding(_DCM, "110150", "Application")]},
                "who": {
                    "identifier": {"system": "urn:medclave:model", "value":
                                   f"sha256:{entry.model_digest}"},
                    "display": f"AI model on {entry.engine_build}",
                },
                "requestor": False,
            },
        ],
        "source": {
            "site": origin,
            "observer": {"identifier": {"system": "urn:medclave:audit-log", "value": origin}},
            "type": [_coding(_SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entities,
    }
    if entry.break_glass:
        event["purposeOfEvent"] = [{"coding": [_coding(_ACT_REASON, "BTG", "break the glass")]}]
    return event


def export_bundle(items: Iterable[tuple[int, AuditEntry]], *, origin: str) -> dict[str, Any]:
    """A FHIR ``Bundle`` of type ``collection`` holding one AuditEvent per ``(index, entry)``."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": audit_event(e, i, origin=origin)} for i, e in items],
    }
