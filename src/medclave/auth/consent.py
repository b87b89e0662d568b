"""FHIR R4 Consent resources to the one Consent entity per patient that policies read.

What is read (https://hl7.org/fhir/R4/consent.html), and how, erring towards refusal:

- Only ``status: active`` resources count; others are ignored (R4 §Consent.status).
- Every provision, nested or not, whose ``type`` is ``deny`` contributes its ``class`` and
  ``code`` codings to ``deny_categories`` and its ``securityLabel`` codings to
  ``deny_security_labels``. A deny provision with none of these denies everything
  (``deny_all``).
- A deny provision's ``actor``, ``period``, ``purpose`` and ``action`` restrictions are NOT
  modelled: the denial is applied to every actor, at all times, for every purpose. Nested
  ``permit`` exceptions inside a deny are likewise not honoured. Both only widen a denial.
- Several active resources for one patient merge into one entity (the union of denials).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from medclave.auth.entities import Consent
from medclave.errors import InputError

MAX_DEPTH: Final = 8
MAX_CODES: Final = 256


def _codes(values: Any) -> set[str]:
    """Codes from a list of Coding (``class``, ``securityLabel``) or CodeableConcept (``code``)."""
    out: set[str] = set()
    if values is None:
        return out
    if not isinstance(values, list):
        raise InputError("input.malformed", "a Consent provision list member is not a list")
    for value in values:
        if not isinstance(value, Mapping):
            raise InputError("input.malformed", "a Consent coding is not an object")
        codings = value.get("coding", [value])
        if not isinstance(codings, list):
            raise InputError("input.malformed", "a Consent coding list is not a list")
        for coding in codings:
            code = coding.get("code") if isinstance(coding, Mapping) else None
            if not isinstance(code, str) or not 0 < len(code) <= 128:
                raise InputError("input.malformed", "a Consent coding has no valid code")
            out.add(code)
    return out


def _walk(provision: Any, depth: int, acc: dict[str, Any]) -> None:
    if depth > MAX_DEPTH:
        raise InputError("input.too_large", "Consent provisions are nested too deeply")
    if not isinstance(provision, Mapping):
        raise InputError("input.malformed", "a Consent provision is not an object")
    if provision.get("type") == "deny":
        categories = _codes(provision.get("class")) | _codes(provision.get("code"))
        labels = _codes(provision.get("securityLabel"))
        if not categories and not labels:
            acc["deny_all"] = True
        acc["categories"] |= categories
        acc["labels"] |= labels
        if len(acc["categories"]) + len(acc["labels"]) > MAX_CODES:
            raise InputError("input.too_large", "too many codes in Consent deny provisions")
    nested = provision.get("provision", [])
    if not isinstance(nested, list):
        raise InputError("input.malformed", "Consent.provision.provision is not a list")
    for child in nested:
        _walk(child, depth + 1, acc)


def _patient_id(resource: Mapping[str, Any]) -> str:
    ref = resource.get("patient", {})
    text = ref.get("reference") if isinstance(ref, Mapping) else None
    if not isinstance(text, str) or not text.startswith("Patient/") or len(text) > 200:
        raise InputError("input.malformed", "Consent.patient must reference Patient/<id>")
    return text.removeprefix("Patient/")


def consent_from_fhir(
    resources: Iterable[Mapping[str, Any]], *, tenant: str, patient: str, consent_id: str = ""
) -> Consent:
    """Merge a patient's FHIR Consent resources into one :class:`Consent` entity.

    Resources for another patient are refused: a consent must never move between records.
    """
    acc: dict[str, Any] = {"deny_all": False, "categories": set(), "labels": set()}
    any_active = False
    for resource in resources:
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "Consent":
            raise InputError("input.malformed", "not a FHIR Consent resource")
        if _patient_id(resource) != patient:
            raise InputError("input.malformed", "a Consent resource is for another patient")
        if resource.get("status") != "active":
            continue
        any_active = True
        if "provision" in resource:
            _walk(resource["provision"], 0, acc)
    return Consent(
        id=consent_id or f"{patient}-consent",
        tenant=tenant,
        patient=patient,
        active=any_active,
        deny_all=bool(acc["deny_all"]),
        deny_categories=frozenset(acc["categories"]),
        deny_security_labels=frozenset(acc["labels"]),
    )
