"""FHIR ingest: bundles, references, validation with paths, all-or-nothing, fuzzing."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.errors import InputError, MedclaveError, RecordsError
from medclave.records.chunks import chunks_of, human_date, split_note
from medclave.records.embed import Embedder
from medclave.records.fhir import parse
from tests.records.conftest import TENANT, make_service

CECELIA = "Patient/f1731e33-dc55-4ee8-72d7-cece2e49bedd"


def _small(bundle: dict[str, Any], n: int = 40) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    out["entry"] = out["entry"][:n]
    return out


def test_a_synthea_transaction_resolves_urn_uuid_and_conditional_references(
        synthea: list[dict[str, Any]]) -> None:
    cecelia = next(b for b in synthea if any(e["resource"]["id"] == CECELIA.split("/")[1]
                                             for e in b["entry"]))
    parsed = parse(cecelia)
    by_ref = {r.reference: r for r in parsed.resources}
    assert by_ref[CECELIA].patient == CECELIA
    obs = by_ref["Observation/163c6f76-eb8a-e906-b4cd-93ca2f0b5e71"]
    assert obs.patient == CECELIA and obs.encounter is not None
    assert obs.encounter.startswith("Encounter/") and obs.encounter in by_ref
    assert obs.category == "exam" and obs.date is not None and obs.date.startswith("2019-07-24")
    encounter = by_ref[obs.encounter]
    # Synthea's practitioners are conditional references to another bundle: kept as keys.
    assert encounter.members and all(m.startswith("Practitioner?identifier=") for m in
                                     encounter.members)
    assert parsed.skipped > 0  # Claim, ExplanationOfBenefit, Provenance: not ingested
    assert {r.type for r in parsed.resources} >= {"Patient", "Encounter", "Observation",
                                                   "DocumentReference", "Immunization"}


def test_structured_resources_render_to_one_dated_line(synthea: list[dict[str, Any]]) -> None:
    parsed = parse(synthea[1])
    line = next(chunks_of(r)[0].text for r in parsed.resources
                if r.reference == "Observation/163c6f76-eb8a-e906-b4cd-93ca2f0b5e71")
    assert line == "Observation 2019-07-24 (July 2019): HIV viral load: 614390 (category exam)"
    assert human_date("2021-03-04T10:00:00Z") == "2021-03-04 (March 2021)"


def test_notes_split_on_sections_and_sentences() -> None:
    note = "# Chief Complaint\nCough. Fever for two days.\n\n# Plan\n" + "Rest well. " * 120
    parts = split_note(note, "Note 2020-01-01")
    assert parts[0] == "Note 2020-01-01 Chief Complaint: Cough. Fever for two days."
    assert len(parts) >= 3 and all(p.startswith("Note 2020-01-01 Plan: ") for p in parts[1:])
    assert all(len(p) <= 600 for p in parts)


def _single(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}]}


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1990-01-01"}


def test_single_resource_and_literal_references_are_read() -> None:
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"text": "CD4 count"}, "subject": {"reference": "Patient/p1"},
           "valueQuantity": {"value": 412, "unit": "cells/uL"},
           "effectiveDateTime": "2021-03-04", "meta": {"security": [{"code": "HIV"}]}}
    parsed = parse(obs)
    assert parsed.resources[0].patient == "Patient/p1"
    assert parsed.resources[0].security == ("HIV",)
    assert chunks_of(parsed.resources[0])[0].text == (
        "Observation 2021-03-04 (March 2021): CD4 count: 412 cells/uL (category Observation)")


@pytest.mark.parametrize(("mutate", "code", "path"), [
    (lambda b: b["entry"][1]["resource"].__setitem__("valueQuantity", {"value": "abc"}),
     "records.invalid_resource", "Bundle.entry[1].resource.valueQuantity.value"),
    (lambda b: b["entry"][1]["resource"].__setitem__("effectiveDateTime", "yesterday"),
     "records.invalid_resource", "Bundle.entry[1].resource.effectiveDateTime"),
    (lambda b: b["entry"][1]["resource"]["subject"].__setitem__("reference", "urn:uuid:nope"),
     "records.reference_unresolved", "Bundle.entry[1].resource.subject.reference"),
    (lambda b: b.__setitem__("type", "document"), "records.invalid_resource", "Bundle.type"),
    (lambda b: b["entry"][1]["resource"].__setitem__("id", "bad id!"),
     "records.invalid_resource", "Bundle.entry[1].resource"),
])
def test_a_bad_resource_is_refused_with_its_path_and_nothing_is_stored(
        embedder: Embedder, mutate: Any, code: str, path: str) -> None:
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"text": "CD4 count"}, "subject": {"reference": "urn:uuid:p1"},
           "valueQuantity": {"value": 412, "unit": "cells/uL"}}
    good = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p1", "resource": dict(PATIENT)},
        {"fullUrl": "urn:uuid:o1", "resource": obs}]}
    service = make_service(embedder)
    bad = copy.deepcopy(good)
    mutate(bad)
    with pytest.raises(RecordsError) as err:
        service.ingest(TENANT, bad)
    assert err.value.code == code
    assert err.value.context["path"].startswith(path)
    assert list(service.store.rows(TENANT)) == []  # nothing of the request
    assert service.ingest(TENANT, good) == {"resources": 2, "chunks": 2, "skipped": 0}
    rows = len(list(service.store.rows(TENANT)))
    with pytest.raises(RecordsError):
        service.ingest(TENANT, bad)
    assert len(list(service.store.rows(TENANT))) == rows  # the earlier records untouched


def test_a_note_is_read_from_base64_text() -> None:
    text = "# Assessment\nStable. Continue therapy."
    doc = {"resourceType": "DocumentReference", "id": "d1", "status": "current",
           "subject": {"reference": "Patient/p1"}, "date": "2020-05-05T00:00:00Z",
           "type": {"text": "Progress note"},
           "content": [{"attachment": {"contentType": "text/plain",
                                       "data": base64.b64encode(text.encode()).decode()}}]}
    chunks = chunks_of(parse(doc).resources[0])
    assert [c.text for c in chunks] == [
        "Progress note 2020-05-05 (May 2020) Assessment: Stable. Continue therapy."]


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_json, kind=st.sampled_from(["Bundle", "Observation", "Patient", "Consent", "Claim"]))
def test_parse_refuses_arbitrary_json_with_a_code(doc: Any, kind: str) -> None:
    if isinstance(doc, dict):
        doc = {**doc, "resourceType": kind}
        if kind == "Bundle":
            doc["type"] = "collection"
            doc["entry"] = [{"resource": {**doc, "resourceType": "Observation"}}]
    try:
        json.dumps(doc)
        parse(doc)
    except (MedclaveError, InputError) as exc:
        assert exc.code.split(".")[0] in ("records", "input")


def test_a_consent_the_policies_cannot_read_is_refused_at_ingest(embedder: Embedder) -> None:
    consent = {"resourceType": "Consent", "id": "c1", "status": "active",
               "scope": {"coding": [{"code": "patient-privacy"}]},
               "category": [{"coding": [{"code": "59284-0"}]}],
               "patient": {"reference": "Patient/p1"},
               "provision": {"type": "deny", "securityLabel": [{"system": "urn:x"}]}}
    service = make_service(embedder)
    with pytest.raises(RecordsError) as err:
        service.ingest(TENANT, {"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": dict(PATIENT)}, {"resource": consent}]})
    assert err.value.code == "records.invalid_resource" and "Consent/c1" in err.value.detail
    assert list(service.store.rows(TENANT)) == []
