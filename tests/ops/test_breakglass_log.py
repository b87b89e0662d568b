"""Break-glass in the log (issue 16): the event and the grant id, never the patient or the
free-text reason; those go whole to the alert channel."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from medclave.auth.authorizer import Authorizer
from medclave.auth.breakglass import EVENT_GRANTED, EVENT_USED, BreakGlass, BreakGlassEvent
from medclave.auth.entities import EntityStore
from tests.auth._helpers import NOW, at
from tests.auth.test_authorizer import USERS, WORLD

REASON = "Unconscious patient Quixote in ED, no care team reachable"


def test_the_log_names_the_event_not_the_patient_or_the_reason(caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    alerts: list[BreakGlassEvent] = []
    authorizer = Authorizer(break_glass=BreakGlass(alert=alerts.append))
    store = EntityStore(WORLD, schema=authorizer.policies.schema)
    with caplog.at_level(logging.DEBUG, logger="medclave.auth.breakglass"):
        grant = authorizer.grant_break_glass(USERS["clinician"].uid, "p2", reason=REASON,
                                             entities=store, ttl=timedelta(minutes=30), now=NOW)
        assert authorizer.decide(USERS["clinician"].uid, "retrieve", 'Document::"d2"',
                                 entities=store, now=at(60), grant=grant.id).allowed
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{EVENT_GRANTED} grant={grant.id}", f"{EVENT_USED} grant={grant.id}"]
    assert not any("p2" in line or "Quixote" in line for line in lines)
    # The alert channel gets the whole story.
    assert [a.event for a in alerts] == [EVENT_GRANTED, EVENT_USED]
    assert alerts[0].reason == REASON and alerts[0].patient.endswith('"p2"')
