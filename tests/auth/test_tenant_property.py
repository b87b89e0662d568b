"""Property: no request from a tenant-A user is ever allowed on a resource of tenant B.

Worlds are drawn at random, including the mistakes a directory can hold: A's users listed on B's
care teams, an A account linked to B's patient, consents, de-identified documents, documents
whose patient sits in the other tenant, and break-glass grants naming B's patients.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.auth.authorizer import ACTIONS, Authorizer
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
from tests.auth._helpers import NOW

TENANTS = ("A", "B")
ROLES = ("clinician", "patient", "researcher", "admin", "service")
AUTHORIZER = Authorizer()


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Any], User, list[EntityUid], list[dict[str, Any]]]:
    teams = {t: [f"{t}-team{i}" for i in range(2)] for t in TENANTS}
    entities: list[Any] = [Tenant(id=t) for t in TENANTS]
    entities += [CareTeam(id=c, tenant=t) for t in TENANTS for c in teams[t]]
    patients = []
    for t in TENANTS:
        for i in range(2):
            pid = f"{t}-p{i}"
            consent = None
            if draw(st.booleans()):
                consent = f"{pid}-consent"
                entities.append(
                    Consent(
                        id=consent,
                        tenant=t,
                        patient=pid,
                        active=draw(st.booleans()),
                        deny_all=draw(st.booleans()),
                        deny_categories=frozenset(draw(st.sets(st.sampled_from(["c1", "c2"])))),
                        deny_security_labels=frozenset(draw(st.sets(st.sampled_from(["PSY", "HIV"])))),
                    )
                )
            all_teams = teams["A"] + teams["B"]
            entities.append(
                Patient(
                    id=pid,
                    tenant=t,
                    care_teams=tuple(draw(st.sets(st.sampled_from(all_teams)))),
                    consent=consent,
                )
            )
            patients.append(pid)
    docs = []
    for j in range(4):
        t = draw(st.sampled_from(TENANTS))
        doc = Document(
            id=f"d{j}",
            tenant=t,
            patient=draw(st.sampled_from(patients)),
            category=draw(st.sampled_from(["c1", "c2", "c3"])),
            security_labels=tuple(draw(st.sets(st.sampled_from(["PSY", "HIV", "N"])))),
            identifiable=draw(st.booleans()),
        )
        docs.append(doc)
    entities += docs
    models = [
        Model(id=f"{t}-m", tenant=t, allowed_roles=tuple(draw(st.sets(st.sampled_from(ROLES)))))
        for t in TENANTS
    ]
    entities += models
    user = User(
        id="attacker",
        tenant="A",
        roles=tuple(draw(st.sets(st.sampled_from(ROLES)))),
        care_teams=tuple(draw(st.sets(st.sampled_from(teams["A"] + teams["B"])))),
        patient=draw(st.sampled_from([None, *patients])),
    )
    entities.append(user)
    b_resources = [EntityUid("Tenant", "B"), *(m.uid for m in models if m.tenant == "B")]
    b_resources += [EntityUid("Patient", p) for p in patients if p.startswith("B-")]
    b_resources += [d.uid for d in docs if d.tenant == "B"]
    contexts: list[dict[str, Any]] = [{}]
    for p in patients:
        grant = {
            "user": user.uid.ref(),
            "patient": EntityUid("Patient", p).ref(),
            "expires_at": 2**40,
            "grant": "g",
        }
        contexts.append({"now": int(NOW.timestamp()), "break_glass": grant})
    return entities, user, b_resources, contexts


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.data())
def test_tenant_a_never_reaches_tenant_b(
    world: tuple[list[Any], User, list[EntityUid], list[dict[str, Any]]], data: st.DataObject
) -> None:
    entities, user, b_resources, contexts = world
    store = EntityStore(entities, schema=AUTHORIZER.policies.schema)
    for resource in b_resources:
        for action in ACTIONS:
            context = data.draw(st.sampled_from(contexts))
            request = {
                "principal": user.uid.to_json(),
                "action": {"type": "Action", "id": action},
                "resource": resource.to_json(),
                "context": context,
            }
            decision = AUTHORIZER.evaluate(request, store)
            assert not decision.allowed, (action, resource, decision)
    # The retrieval path too: nothing of B's survives filtering, whatever the grant.
    b_docs = [r for r in b_resources if r.type == "Document"]
    assert AUTHORIZER.filter_documents(user.uid, b_docs, entities=store, now=NOW) == []
