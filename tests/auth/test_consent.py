"""FHIR R4 Consent deny provisions to the Consent entity, read conservatively."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.auth.consent import consent_from_fhir
from medclave.errors import InputError, MedclaveError


def consent(provision: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "patient": {"reference": "Patient/p1"},
    }
    if provision is not None:
        doc["provision"] = provision
    doc.update(over)
    return doc


LABEL = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}


def test_nested_deny_provisions() -> None:
    c = consent_from_fhir(
        [
            consent(
                {
                    "type": "permit",
                    "provision": [
                        {"type": "deny", "securityLabel": [LABEL]},
                        {
                            "type": "deny",
                            "code": [{"coding": [{"system": "http://loinc.org", "code": "51969-4"}]}],
                        },
                        {
                            "type": "deny",
                            "class": [
                                {"system": "http://hl7.org/fhir/resource-types", "code": "DocumentReference"}
                            ],
                        },
                        {"type": "permit", "securityLabel": [{"code": "HIV"}]},
                    ],
                }
            )
        ],
        tenant="st-mary",
        patient="p1",
    )
    assert c.active and not c.deny_all
    assert c.deny_security_labels == {"PSY"}
    assert c.deny_categories == {"51969-4", "DocumentReference"}
    assert c.to_cedar()["attrs"]["deny_security_labels"] == ["PSY"]


def test_unrestricted_deny_denies_everything() -> None:
    # Root deny with a permit exception: the exception is not modelled, so all is denied.
    c = consent_from_fhir(
        [consent({"type": "deny", "provision": [{"type": "permit", "code": [{"coding": [{"code": "x"}]}]}]})],
        tenant="st-mary",
        patient="p1",
    )
    assert c.deny_all


def test_actor_and_period_restrictions_widen_rather_than_narrow() -> None:
    c = consent_from_fhir(
        [
            consent(
                {
                    "type": "permit",
                    "provision": [
                        {
                            "type": "deny",
                            "actor": [{"reference": {"reference": "Practitioner/x"}}],
                            "period": {"start": "2020-01-01", "end": "2020-02-01"},
                            "securityLabel": [LABEL],
                        }
                    ],
                }
            )
        ],
        tenant="st-mary",
        patient="p1",
    )
    assert c.deny_security_labels == {"PSY"}


def test_inactive_resources_are_ignored_and_several_merge() -> None:
    c = consent_from_fhir(
        [
            consent({"type": "deny"}, status="inactive"),
            consent({"type": "permit", "provision": [{"type": "deny", "securityLabel": [LABEL]}]}),
            consent({"type": "permit", "provision": [{"type": "deny", "securityLabel": [{"code": "ETH"}]}]}),
        ],
        tenant="st-mary",
        patient="p1",
    )
    assert c.active and not c.deny_all
    assert c.deny_security_labels == {"PSY", "ETH"}
    none_active = consent_from_fhir(
        [consent({"type": "deny"}, status="draft")], tenant="st-mary", patient="p1"
    )
    assert not none_active.active


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient"},
        consent(patient={"reference": "Patient/p2"}),
        consent(patient={"reference": "Group/p1"}),
        consent(patient=None),
        consent({"type": "deny", "securityLabel": [{"system": "x"}]}),
        consent({"type": "deny", "securityLabel": "PSY"}),
        consent({"type": "deny", "code": [{"coding": "x"}]}),
        consent({"type": "permit", "provision": {"type": "deny"}}),
        consent("deny"),  # type: ignore[arg-type]
    ],
)
def test_malformed_or_misdirected(resource: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        consent_from_fhir([resource], tenant="st-mary", patient="p1")


def test_nesting_is_bounded() -> None:
    provision: dict[str, Any] = {"type": "deny"}
    for _ in range(20):
        provision = {"type": "permit", "provision": [provision]}
    with pytest.raises(InputError) as err:
        consent_from_fhir([consent(provision)], tenant="st-mary", patient="p1")
    assert err.value.code == "input.too_large"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "provision", "code", "coding", "class", "securityLabel", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_random_provisions_only_raise_input_errors(provision: Any) -> None:
    with contextlib.suppress(MedclaveError):
        consent_from_fhir([consent(provision)], tenant="st-mary", patient="p1")
