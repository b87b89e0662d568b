"""Break-glass: reason required, authorized by policy, time-boxed, every use recorded and alerted."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.auth.breakglass import EVENT_GRANTED, EVENT_REFUSED, EVENT_USED, BreakGlass, BreakGlassEvent
from medclave.auth.entities import EntityStore, EntityUid
from medclave.errors import AuthError, InputError
from tests.auth._helpers import NOW, at
from tests.auth.test_authorizer import USERS, WORLD

CLIN = USERS["clinician"].uid
REASON = "Unconscious patient in ED, no care team reachable"


@pytest.fixture
def setup() -> tuple[Authorizer, EntityStore, list[BreakGlassEvent], list[DecisionRecord]]:
    alerts: list[BreakGlassEvent] = []
    records: list[DecisionRecord] = []
    authorizer = Authorizer(sink=records.append, break_glass=BreakGlass(alert=alerts.append))
    return authorizer, EntityStore(WORLD, schema=authorizer.policies.schema), alerts, records


def test_grant_use_and_expiry(setup, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    authorizer, store, alerts, records = setup
    # Without a grant the clinician cannot see p2's record (not on p2's care team).
    assert not authorizer.decide(CLIN, "retrieve", 'Document::"d2"', entities=store, now=NOW).allowed

    with caplog.at_level(logging.WARNING, logger="medclave.auth.breakglass"):
        grant = authorizer.grant_break_glass(
            CLIN, "p2", reason=REASON, entities=store, ttl=timedelta(minutes=30), now=NOW
        )
        assert grant.expires_at == at(1800)
        decision = authorizer.decide(
            CLIN, "retrieve", 'Document::"d2"', entities=store, now=at(60), grant=grant.id
        )
        assert decision.allowed
        assert decision.reasons == ("clinician-break-glass-documents",)
        history = authorizer.decide(
            CLIN, "read_history", 'Patient::"p2"', entities=store, now=at(61), grant=grant.id
        )
        assert history.reasons == ("clinician-break-glass-history",)
    assert [a.event for a in alerts] == [EVENT_GRANTED, EVENT_USED, EVENT_USED]
    assert alerts[1].resource == 'Document::"d2"' and alerts[1].reason == REASON
    assert [r.message.split()[0] for r in caplog.records] == [EVENT_GRANTED, EVENT_USED, EVENT_USED]
    assert records[-1].break_glass_grant == grant.id

    # The grant covers p2 only: other patients stay closed, and tenant isolation still holds.
    assert not authorizer.decide(
        CLIN, "retrieve", 'Document::"d3"', entities=store, now=at(62), grant=grant.id
    ).allowed

    # Once expired, the grant is refused with its own code, and the refusal is alerted too.
    with pytest.raises(AuthError) as err:
        authorizer.decide(CLIN, "retrieve", 'Document::"d2"', entities=store, now=at(1800), grant=grant.id)
    assert err.value.code == "auth.break_glass_expired"
    assert alerts[-1].event == EVENT_REFUSED
    assert authorizer.break_glass is not None
    assert [e.event for e in authorizer.break_glass.events()] == [
        EVENT_GRANTED,
        EVENT_USED,
        EVENT_USED,
        EVENT_REFUSED,
    ]


def test_grant_needs_a_reason(setup) -> None:  # type: ignore[no-untyped-def]
    authorizer, store, alerts, _ = setup
    for reason in ("", "   ", "urgent"):
        with pytest.raises(AuthError) as err:
            authorizer.grant_break_glass(CLIN, "p2", reason=reason, entities=store, now=NOW)
        assert err.value.code == "auth.break_glass_reason_missing"
    assert alerts == []


def test_grant_is_authorized_by_policy(setup) -> None:  # type: ignore[no-untyped-def]
    authorizer, store, alerts, _ = setup
    for who, patient in ((USERS["researcher"].uid, "p2"), (USERS["patient"].uid, "p2"), (CLIN, "p3")):
        with pytest.raises(AuthError) as err:
            authorizer.grant_break_glass(who, patient, reason=REASON, entities=store, now=NOW)
        assert err.value.code == "auth.forbidden"
    assert alerts == []


def test_grants_are_personal(setup) -> None:  # type: ignore[no-untyped-def]
    authorizer, store, _, _ = setup
    grant = authorizer.grant_break_glass(CLIN, "p2", reason=REASON, entities=store, now=NOW)
    other = EntityUid("User", "u-other")
    with pytest.raises(AuthError) as err:
        authorizer.decide(other, "retrieve", 'Document::"d2"', entities=store, now=NOW, grant=grant.id)
    assert err.value.code == "auth.forbidden"
    with pytest.raises(AuthError):
        authorizer.decide(CLIN, "retrieve", 'Document::"d2"', entities=store, now=NOW, grant="made-up")


def test_ttl_is_capped() -> None:
    store = BreakGlass(max_ttl=timedelta(hours=1))
    grant = store.grant(
        user=EntityUid("User", "u"),
        patient=EntityUid("Patient", "p"),
        reason=REASON,
        now=NOW,
        ttl=timedelta(days=2),
    )
    assert grant.expires_at == NOW + timedelta(hours=1)
    with pytest.raises(InputError):
        BreakGlass(max_ttl=timedelta(days=2))
    with pytest.raises(InputError):
        store.grant(
            user=EntityUid("User", "u"), patient=EntityUid("Patient", "p"), reason="x" * 2000, now=NOW
        )


def test_grant_without_store_or_clock() -> None:
    authorizer = Authorizer()
    store = EntityStore(WORLD, schema=authorizer.policies.schema)
    with pytest.raises(InputError):
        authorizer.grant_break_glass(CLIN, "p2", reason=REASON, entities=store, now=NOW)
    with pytest.raises(InputError):
        authorizer.decide(CLIN, "retrieve", 'Document::"d2"', entities=store, grant="g")


def test_filter_with_a_grant_records_each_use(setup) -> None:  # type: ignore[no-untyped-def]
    authorizer, store, alerts, _ = setup
    grant = authorizer.grant_break_glass(CLIN, "p2", reason=REASON, entities=store, now=NOW)
    kept = authorizer.filter_documents(CLIN, ["d1", "d2", "d3"], entities=store, now=at(5), grant=grant.id)
    assert kept == ["d1", "d2"]
    # d1 was allowed by the care team, not the grant: only d2 counts as a break-glass use.
    assert [(a.event, a.resource) for a in alerts] == [(EVENT_GRANTED, None), (EVENT_USED, 'Document::"d2"')]
