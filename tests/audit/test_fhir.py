"""FHIR R4 AuditEvent export (IHE BALP shape), validated with a FHIR model library."""

from __future__ import annotations

import json

import pytest

from medclave.audit.fhir import audit_event, export_bundle
from tests.audit._builders import MODEL, ORIGIN, make_entry

_BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"


def _validate(resource: dict[str, object]) -> None:
    # R4B kept AuditEvent as in R4; the library is a test-only check of the structure.
    fhir = pytest.importorskip("fhir.resources.R4B.bundle", reason="fhir.resources not installed")
    if resource["resourceType"] == "Bundle":
        fhir.Bundle.model_validate(resource)
    else:
        from fhir.resources.R4B.auditevent import AuditEvent

        AuditEvent.model_validate(resource)


def test_one_event_per_entry_shaped_after_balp() -> None:
    docs = ("DocumentReference/1", "DocumentReference/2", "DocumentReference/3")
    entry = make_entry(7, documents=docs)
    event = audit_event(entry, 1234, origin=ORIGIN)
    _validate(event)
    assert event["outcome"] == "0" and event["action"] == "E"
    user, device = event["agent"]
    assert user["who"]["identifier"]["value"] == entry.user and user["requestor"] is True
    assert user["type"]["coding"][0]["code"] == "IRCP"
    assert device["who"]["identifier"]["value"] == f"sha256:{MODEL}"
    roles = [e.get("role", {}).get("code") for e in event["entity"]]
    assert roles == ["1", "4", "4", "4", None]  # patient, one per document, transaction
    assert event["entity"][0]["what"]["identifier"]["value"] == entry.patient
    assert [e["what"]["identifier"]["value"] for e in event["entity"][1:4]] == list(
        entry.documents)
    transaction = event["entity"][-1]
    assert transaction["type"]["system"] == _BALP_ENTITY
    details = {d["type"]: d.get("valueString") for d in transaction["detail"]}
    assert details["model_digest"] == f"sha256:{MODEL}"
    assert details["log_index"] == "1234" and details["log_origin"] == ORIGIN
    assert "purposeOfEvent" not in event
    broken = {k: v for k, v in event.items() if k != "agent"}
    with pytest.raises(ValueError):  # the validator has teeth: agent is 1..*
        _validate(broken)


def test_break_glass_and_denial() -> None:
    event = audit_event(make_entry(1, decision="deny", break_glass=True), 0, origin=ORIGIN)
    _validate(event)
    assert event["outcome"] == "4"
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "BTG"
    details = {d["type"] for d in event["entity"][-1]["detail"]}
    assert "answer_commitment" not in details


def test_bundle_carries_no_phi() -> None:
    prompt = "Jane Roe, born 1961-02-03, viral load 120000 copies/mL"
    bundle = export_bundle([(i, make_entry(i, prompt=prompt)) for i in range(3)], origin=ORIGIN)
    _validate(bundle)
    assert len(bundle["entry"]) == 3
    text = json.dumps(bundle)
    assert "Jane" not in text and "1961" not in text and "120000" not in text
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert len(ids) == 3
