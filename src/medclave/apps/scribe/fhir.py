"""The drafted note as a FHIR R4 ``DocumentReference`` (LOINC 11506-3, progress note).

``docStatus`` is ``preliminary``: the note is a draft for the clinician to review and sign.
The note's text is the attachment (``text/plain``, base64), the patient the ``subject`` and the
encounter (when the visit context names one) ``context.encounter``. Built as plain JSON and
validated with ``fhir.resources``' R4B model (R4B's DocumentReference is R4's: the resource did
not change between them), so what leaves is a resource an EHR's FHIR endpoint accepts.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any, Final

from medclave.errors import EnclaveError, InputError

LOINC: Final = "http://loinc.org"
PROGRESS_NOTE: Final = "11506-3"
# FHIR R4 §2.24.0.1 "id": 1 to 64 of [A-Za-z0-9\-\.].
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CATEGORY: Final = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"


def reference(kind: str, value: str | None) -> str | None:
    """``Kind/id`` from ``id`` or ``Kind/id``; ``input.malformed`` for anything else."""
    if value is None:
        return None
    ident = value[len(kind) + 1:] if value.startswith(f"{kind}/") else value
    if not _ID.match(ident):
        raise InputError("input.malformed", f"{kind} is a FHIR id (1-64 of A-Z a-z 0-9 - .)",
                         param=kind.lower())
    return f"{kind}/{ident}"


def document_reference(note: str, *, when: datetime, patient: str | None,
                       encounter: str | None) -> dict[str, Any]:
    """The resource (plain JSON, validated)."""
    stamp = when.isoformat(timespec="seconds").replace("+00:00", "Z")
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [{"system": LOINC, "code": PROGRESS_NOTE,
                             "display": "Progress note"}]},
        "category": [{"coding": [{"system": _CATEGORY, "code": "clinical-note",
                                  "display": "Clinical Note"}]}],
        "date": stamp,
        "description": "Draft SOAP note from a visit recording (Medclave scribe); review "
                       "before signing.",
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                    "language": "en",
                                    "data": base64.b64encode(note.encode()).decode(),
                                    "title": "SOAP note (draft)", "creation": stamp}}],
    }
    if patient is not None:
        resource["subject"] = {"reference": patient}
    if encounter is not None:
        resource["context"] = {"encounter": [{"reference": encounter}]}
    validate(resource)
    return resource


def validate(resource: dict[str, Any]) -> None:
    from fhir.resources.R4B.documentreference import DocumentReference

    try:
        DocumentReference.model_validate(resource)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise EnclaveError("internal", "the DocumentReference does not validate") from exc
