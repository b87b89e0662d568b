"""Cedar decisions with the shipped policies: the role x action x relationship matrix, consent,
fail-closed evaluation, identities as principals, filtering, audit records, policy loading."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.auth.authorizer import Authorizer, DecisionRecord, load_policies
from medclave.auth.entities import (
    CareTeam,
    Consent,
    Document,
    EntityStore,
    EntityUid,
    Model,
    Patient,
    Tenant,
    User,
)
from medclave.auth.tokens import Identity
from medclave.errors import AuthError, InputError, MedclaveError
from tests.auth._helpers import NOW

A, B = "st-mary", "northside"

USERS = {
    # The tenant-A clinician is also (wrongly) listed on a tenant-B care team: isolation must hold.
    "clinician": User(id="u-clin", tenant=A, roles=("clinician",), care_teams=("t1", "t3")),
    "patient": User(id="u-pat", tenant=A, roles=("patient",), patient="p1"),
    "researcher": User(id="u-res", tenant=A, roles=("researcher",)),
    "admin": User(id="u-adm", tenant=A, roles=("admin",)),
    "none": User(id="u-none", tenant=A, roles=()),
}
WORLD = [
    Tenant(id=A),
    Tenant(id=B),
    CareTeam(id="t1", tenant=A),
    CareTeam(id="t2", tenant=A),
    CareTeam(id="t3", tenant=B),
    Patient(id="p1", tenant=A, care_teams=("t1",)),
    Patient(id="p2", tenant=A, care_teams=("t2",)),
    Patient(id="p3", tenant=B, care_teams=("t3",)),
    Document(id="d1", tenant=A, patient="p1", category="11506-3"),
    Document(id="d2", tenant=A, patient="p2", category="11506-3"),
    Document(id="d3", tenant=B, patient="p3", category="11506-3"),
    Model(id="m1", tenant=A, allowed_roles=("clinician", "patient", "researcher")),
    Model(id="m2", tenant=A, allowed_roles=("clinician",)),
    Model(id="m3", tenant=B, allowed_roles=("clinician", "patient", "researcher", "admin")),
    *USERS.values(),
]

# relationship -> the resource each action is asked about
RESOURCES = {
    "linked": {
        "infer": 'Model::"m1"',
        "retrieve": 'Document::"d1"',
        "read_history": 'Patient::"p1"',
        "break_glass": 'Patient::"p1"',
        "admin": 'Tenant::"st-mary"',
    },
    "unlinked": {
        "infer": 'Model::"m2"',
        "retrieve": 'Document::"d2"',
        "read_history": 'Patient::"p2"',
        "break_glass": 'Patient::"p2"',
        "admin": 'Tenant::"st-mary"',
    },
    "other-tenant": {
        "infer": 'Model::"m3"',
        "retrieve": 'Document::"d3"',
        "read_history": 'Patient::"p3"',
        "break_glass": 'Patient::"p3"',
        "admin": 'Tenant::"northside"',
    },
}
# The expected matrix: (role, action) -> relationships that are allowed. Everything else is denied.
ALLOWED = {
    ("clinician", "infer"): {"linked", "unlinked"},
    ("clinician", "retrieve"): {"linked"},
    ("clinician", "read_history"): {"linked"},
    ("clinician", "break_glass"): {"linked", "unlinked"},
    ("patient", "infer"): {"linked"},
    ("patient", "retrieve"): {"linked"},
    ("patient", "read_history"): {"linked"},
    ("researcher", "infer"): {"linked"},
    ("admin", "admin"): {"linked", "unlinked"},
}
ACTIONS = ("infer", "retrieve", "read_history", "break_glass", "admin")


@pytest.fixture(scope="module")
def authorizer() -> Authorizer:
    return Authorizer()


@pytest.fixture(scope="module")
def store(authorizer: Authorizer) -> EntityStore:
    return EntityStore(WORLD, schema=authorizer.policies.schema)


@pytest.mark.parametrize("role", list(USERS))
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("relationship", list(RESOURCES))
def test_matrix(
    authorizer: Authorizer, store: EntityStore, role: str, action: str, relationship: str
) -> None:
    decision = authorizer.decide(
        USERS[role].uid, action, RESOURCES[relationship][action], entities=store, now=NOW
    )
    expected = relationship in ALLOWED.get((role, action), set())
    assert decision.allowed is expected, decision
    assert not decision.errors
    if relationship == "other-tenant":
        assert "tenant-isolation" in decision.reasons


def test_researcher_gets_deidentified_documents_only(authorizer: Authorizer) -> None:
    deid = Document(id="d-deid", tenant=A, patient="p2", category="11506-3", identifiable=False)
    store = EntityStore([*WORLD, deid], schema=authorizer.policies.schema)
    res = USERS["researcher"].uid
    assert authorizer.decide(res, "retrieve", deid.uid, entities=store, now=NOW).reasons == (
        "researcher-deidentified-documents",
    )
    # A researcher who is also on the care team still gets nothing identifiable.
    both = User(id="u-both", tenant=A, roles=("researcher", "clinician"), care_teams=("t1",))
    decision = authorizer.decide(both, "retrieve", 'Document::"d1"', entities=store, now=NOW)
    assert not decision.allowed
    assert "researcher-nothing-identifiable" in decision.reasons


# --- consent --------------------------------------------------------------------------------------


def _consented(authorizer: Authorizer, consent: Consent) -> EntityStore:
    world = [e for e in WORLD if not (isinstance(e, Patient) and e.id == "p1")]
    world += [Patient(id="p1", tenant=A, care_teams=("t1",), consent=consent.id), consent]
    world += [
        Document(id="d1-psy", tenant=A, patient="p1", category="11488-4", security_labels=("PSY",)),
        Document(id="d1-gen", tenant=A, patient="p1", category="51969-4"),
    ]
    return EntityStore(world, schema=authorizer.policies.schema)


def test_consent_denial_beats_care_team(authorizer: Authorizer) -> None:
    consent = Consent(
        id="c1",
        tenant=A,
        patient="p1",
        deny_categories=frozenset({"51969-4"}),
        deny_security_labels=frozenset({"PSY"}),
    )
    store = _consented(authorizer, consent)
    clin = USERS["clinician"].uid
    assert authorizer.decide(clin, "retrieve", 'Document::"d1"', entities=store, now=NOW).allowed
    psy = authorizer.decide(clin, "retrieve", 'Document::"d1-psy"', entities=store, now=NOW)
    assert not psy.allowed and psy.reasons == ("consent-deny-security-label",)
    gen = authorizer.decide(clin, "retrieve", 'Document::"d1-gen"', entities=store, now=NOW)
    assert not gen.allowed and gen.reasons == ("consent-deny-category",)
    # The patient's own access is not governed by their consent.
    assert authorizer.decide(
        USERS["patient"].uid, "retrieve", 'Document::"d1-psy"', entities=store, now=NOW
    ).allowed
    # An inactive consent denies nothing.
    inactive = _consented(authorizer, replace(consent, active=False))
    assert authorizer.decide(clin, "retrieve", 'Document::"d1-psy"', entities=inactive, now=NOW).allowed


def test_deny_all_consent_covers_documents_and_history(authorizer: Authorizer) -> None:
    store = _consented(authorizer, Consent(id="c1", tenant=A, patient="p1", deny_all=True))
    clin = USERS["clinician"].uid
    for action, resource in (("retrieve", 'Document::"d1"'), ("read_history", 'Patient::"p1"')):
        decision = authorizer.decide(clin, action, resource, entities=store, now=NOW)
        assert not decision.allowed
        assert decision.reasons[0].startswith("consent-deny-all")
    assert authorizer.decide(
        USERS["patient"].uid, "read_history", 'Patient::"p1"', entities=store, now=NOW
    ).allowed


# --- fail closed ------------------------------------------------------------------------------------


def test_evaluation_errors_deny(authorizer: Authorizer, store: EntityStore) -> None:
    # The document's patient is missing from the entities: the policies that read it error, and
    # an error must never let a request through, whatever Cedar's own decision.
    orphan = Document(id="d-orphan", tenant=A, patient="p-missing", category="11506-3")
    decision = authorizer.decide(USERS["clinician"].uid, "retrieve", orphan, entities=store, now=NOW)
    assert not decision.allowed
    assert decision.errors
    assert any("p-missing" in e for e in decision.errors)


def test_unknown_principal_is_denied(authorizer: Authorizer, store: EntityStore) -> None:
    decision = authorizer.decide('User::"ghost"', "infer", 'Model::"m1"', entities=store, now=NOW)
    assert not decision.allowed


def test_reserved_context_keys(authorizer: Authorizer, store: EntityStore) -> None:
    for key in ("break_glass", "now"):
        with pytest.raises(InputError):
            authorizer.decide(USERS["clinician"].uid, "retrieve", 'Document::"d2"', {key: 1}, store, now=NOW)


def test_context_outside_the_schema_denies(authorizer: Authorizer, store: EntityStore) -> None:
    decision = authorizer.decide(
        USERS["clinician"].uid, "retrieve", 'Document::"d1"', {"x": 1}, store, now=NOW
    )
    assert not decision.allowed and decision.errors


def test_unknown_action(authorizer: Authorizer, store: EntityStore) -> None:
    with pytest.raises(InputError):
        authorizer.decide(USERS["clinician"].uid, "delete", 'Document::"d1"', entities=store, now=NOW)


def test_require_raises_forbidden(authorizer: Authorizer, store: EntityStore) -> None:
    authorizer.decide(USERS["clinician"].uid, "retrieve", 'Document::"d1"', entities=store, now=NOW).require()
    with pytest.raises(AuthError) as err:
        authorizer.decide(
            USERS["clinician"].uid, "retrieve", 'Document::"d2"', entities=store, now=NOW
        ).require()
    assert err.value.code == "auth.forbidden"


# --- identities ------------------------------------------------------------------------------------


def identity(sub: str, tenant: str, *roles: str) -> Identity:
    return Identity(
        subject=sub,
        tenant=tenant,
        roles=roles,
        issuer="i",
        audience=("medclave",),
        token_id="j",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )


def test_identity_principal_takes_roles_from_token_and_teams_from_directory(
    authorizer: Authorizer, store: EntityStore
) -> None:
    who = identity("u-clin", A, "clinician")
    assert authorizer.decide(who, "retrieve", 'Document::"d1"', entities=store, now=NOW).allowed
    # The same person with a researcher token gets the researcher's rights.
    res = identity("u-clin", A, "researcher")
    assert not authorizer.decide(res, "retrieve", 'Document::"d1"', entities=store, now=NOW).allowed
    # A token from another tenant for the same subject gets no care-team memberships.
    other = identity("u-clin", B, "clinician")
    assert store.user_for(other).care_teams == ()
    assert not authorizer.decide(other, "retrieve", 'Document::"d3"', entities=store, now=NOW).allowed


def test_identity_not_in_directory(authorizer: Authorizer, store: EntityStore) -> None:
    who = identity("new-user", A, "clinician")
    assert authorizer.decide(who, "infer", 'Model::"m1"', entities=store, now=NOW).allowed
    assert not authorizer.decide(who, "retrieve", 'Document::"d1"', entities=store, now=NOW).allowed


# --- filtering and the audit record ----------------------------------------------------------------------


def test_filter_documents_keeps_order_and_records_each_decision(store: EntityStore) -> None:
    records: list[DecisionRecord] = []
    authorizer = Authorizer(sink=records.append)
    fresh = Document(id="d-new", tenant=A, patient="p1", category="11506-3")  # not in the directory
    candidates: list[object] = ['Document::"d2"', fresh, EntityUid("Document", "d1"), "d3"]
    kept = authorizer.filter_documents(
        identity("u-clin", A, "clinician"), candidates, entities=store, now=NOW
    )
    assert kept == [fresh, EntityUid("Document", "d1")]
    assert [r.resource for r in records] == [
        'Document::"d2"',
        'Document::"d-new"',
        'Document::"d1"',
        'Document::"d3"',
    ]
    assert [r.decision for r in records] == ["deny", "allow", "allow", "deny"]
    assert records[1].reasons == ("clinician-care-team-retrieve",)
    assert records[3].reasons == ("tenant-isolation",)
    assert all(r.policy_digest == authorizer.policies.digest for r in records)
    assert records[0].to_dict()["at"] == NOW.isoformat()
    assert authorizer.filter_documents(USERS["clinician"].uid, [], entities=store, now=NOW) == []


def test_directory_entry_wins_over_a_candidate_copy(authorizer: Authorizer, store: EntityStore) -> None:
    # A retrieval result claiming d2 belongs to p1 cannot override the directory's d2.
    forged = Document(id="d2", tenant=A, patient="p1", category="11506-3")
    assert authorizer.filter_documents(USERS["clinician"].uid, [forged], entities=store, now=NOW) == []


# --- loading policies -------------------------------------------------------------------------------------


def test_shipped_policies(authorizer: Authorizer) -> None:
    ids = authorizer.policies.ids
    assert len(ids) == len(set(ids))
    assert {"tenant-isolation", "consent-deny-category", "clinician-care-team-retrieve"} <= set(ids)
    assert authorizer.policies.break_glass_ids == {
        "clinician-break-glass-documents",
        "clinician-break-glass-history",
    }
    assert len(authorizer.policies.digest) == 64


def _policy_dir(tmp_path: Path, text: str) -> Path:
    (tmp_path / "p.cedar").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "text",
    [
        "permit(principal, action, resource);",  # no @id
        '@id("a") permit(principal, action, resource);\n@id("a") forbid(principal, action, resource);',
        '@id("a") permit(principal, action, resource) when { principal.rolez.contains("x") };',  # schema
        '@id("a") permit(principal == ?principal, action, resource);',  # template
        '@id("a") permit(principal, action, resource',  # syntax
    ],
)
def test_bad_policies_fail_at_load(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError) as err:
        load_policies(_policy_dir(tmp_path, text))
    assert err.value.code == "config.invalid"


def test_custom_policies_and_digest(tmp_path: Path, store: EntityStore) -> None:
    one = load_policies(
        _policy_dir(
            tmp_path, '@id("everyone-infers") permit(principal, action == Action::"infer", resource);'
        )
    )
    custom = Authorizer(policies=one)
    assert custom.decide(USERS["none"].uid, "infer", 'Model::"m3"', entities=store, now=NOW).reasons == (
        "everyone-infers",
    )
    two = load_policies(_policy_dir(tmp_path, '@id("nobody") forbid(principal, action, resource);'))
    assert one.digest != two.digest
    with pytest.raises(InputError):
        load_policies(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError):
        load_policies(empty)


def test_entities_must_match_the_schema(authorizer: Authorizer) -> None:
    bad = {"uid": {"type": "User", "id": "x"}, "attrs": {"tenant": "st-mary", "roles": []}, "parents": []}
    with pytest.raises(InputError):
        EntityStore([bad], schema=authorizer.policies.schema)
    with pytest.raises(InputError):
        EntityStore([Tenant(id=A), Tenant(id=A)], schema=authorizer.policies.schema)


def test_slices_decide_exactly_as_the_whole_directory(authorizer: Authorizer, store: EntityStore) -> None:
    # keep_parsed_limit=0 forces every request onto a slice of the directory.
    sliced = EntityStore(WORLD, schema=authorizer.policies.schema, keep_parsed_limit=0)
    for user in USERS.values():
        for principal in (
            user.uid,
            identity(user.id, user.tenant, *user.roles),
            identity(user.id, A, "clinician"),
        ):
            for relationship in RESOURCES.values():
                for action, resource in relationship.items():
                    whole = authorizer.decide(principal, action, resource, entities=store, now=NOW)
                    part = authorizer.decide(principal, action, resource, entities=sliced, now=NOW)
                    assert whole == part, (principal, action, resource)


def test_extended_store(authorizer: Authorizer, store: EntityStore) -> None:
    new = Document(id="d-late", tenant=A, patient="p1", category="11506-3")
    bigger = store.extended([new])
    assert len(bigger) == len(store) + 1
    assert authorizer.decide(USERS["clinician"].uid, "retrieve", new.uid, entities=bigger, now=NOW).allowed
    with pytest.raises(InputError):
        bigger.extended([new])


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_uids = st.one_of(
    st.sampled_from(['User::"u-clin"', 'Document::"d1"', 'Patient::"p1"', 'Tenant::"x"', "junk", ""]),
    _json,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    principal=_uids,
    action=st.one_of(st.sampled_from(['Action::"retrieve"', "infer", 'Action::"nope"']), _json),
    resource=_uids,
    context=st.one_of(
        _json, st.dictionaries(st.sampled_from(["now", "break_glass", "x"]), _json, max_size=2)
    ),
)
def test_random_requests_never_crash_or_allow_oddities(
    authorizer: Authorizer,
    store: EntityStore,
    principal: object,
    action: object,
    resource: object,
    context: object,
) -> None:
    request = {"principal": principal, "action": action, "resource": resource, "context": context}
    try:
        decision = authorizer.evaluate(request, store)
    except MedclaveError:
        return
    if decision.allowed:
        # Only a well-formed request naming the world's entities can be allowed.
        assert decision.reasons and not decision.errors
