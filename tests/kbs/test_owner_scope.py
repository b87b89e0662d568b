"""The broker's owner API as an enforcement point (issue 6): an owner credential acts only under
its own ``kbs:///OWNER/`` prefix; every call, read or change, is in the decision log with its
action, the acting owner and the outcome. Over real HTTP on 127.0.0.1, over both stores."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from medclave.errors import KbsError
from medclave.kbs.client import OwnerClient
from medclave.kbs.names import ResourceName
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import Decision, KbsStore, MemoryKbsStore
from tests.kbs.conftest import Live
from tests.kbs.helpers import RESOURCE, error_code, sim_policy
from tests.ops.old_schemas import KBS_SCHEMA_1_BEFORE_ACTOR

LiveFactory = Callable[..., Live]
BASE = "/kbs/v1/owner"
ABSENT = "kbs:///vendor/model-key/never-made"  # another owner's name that does not exist
SECRET = {"secret": base64.b64encode(b"m" * 32).decode()}


@pytest.fixture(params=["memory", "sqlite"])
def live(request: pytest.FixtureRequest, live_factory: LiveFactory, tmp_path: Path
         ) -> Iterator[Live]:
    store: KbsStore = (MemoryKbsStore() if request.param == "memory"
                       else SqliteKbsStore(tmp_path / "scope.db"))
    yield live_factory(store=store)
    store.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def path(resource: str) -> str:
    return resource.removeprefix("kbs:///")


# (action recorded, method, URL under the owner API, JSON body or None)
Call = tuple[str, str, Callable[[str], str], Any]
CALLS: list[Call] = [
    ("create", "PUT", lambda r: f"/resources/{path(r)}", SECRET),
    ("rotate", "POST", lambda r: f"/resources/{path(r)}/rotate", SECRET),
    ("retire", "DELETE", lambda r: f"/resources/{path(r)}/versions/1", None),
    ("delete", "DELETE", lambda r: f"/resources/{path(r)}", None),
    ("read", "GET", lambda r: f"/resources/{path(r)}", None),
    ("policy_set", "PUT", lambda r: f"/policies/{path(r)}", "policy"),
    ("policy_read", "GET", lambda r: f"/policies/{path(r)}", None),
    ("policy_retire", "DELETE", lambda r: f"/policies/{path(r)}/versions/1", None),
    ("decisions_read", "GET", lambda r: f"/decisions?resource={r}", None),
]


def send(live: Live, token: str, call: Call, resource: str) -> httpx.Response:
    _, method, url, body = call
    content = None
    if body == "policy":
        content = sim_policy().to_json().encode()
    elif body is not None:
        content = httpx.Request("PUT", "http://x", json=body).content
    return httpx.request(method, live.url + BASE + url(resource), content=content,
                         headers=auth(token))


def provision_vendor(live: Live) -> str:
    token = live.token("vendor")
    with OwnerClient(live.url, token) as c:
        c.put(RESOURCE, b"v" * 32)
        c.rotate(RESOURCE, b"w" * 32)
        c.set_policy(RESOURCE, sim_policy())
        c.set_policy(RESOURCE, sim_policy(model_digests=("ab" * 32,)))
    return token


@pytest.mark.parametrize("call", CALLS, ids=[c[0] for c in CALLS])
def test_a_cross_owner_call_answers_exactly_as_not_found_and_is_recorded(
        live: Live, call: Call) -> None:
    vendor = provision_vendor(live)
    mallory = live.token("mallory")
    not_found = httpx.get(live.url + BASE + "/resources/mallory/model-key/none",
                          headers=auth(mallory))
    assert not_found.status_code == 404 and error_code(not_found) == "kbs.not_found"
    before = live.broker.store.resource_info(ResourceName.parse(RESOURCE))

    for target in (RESOURCE, ABSENT):
        answer = send(live, mallory, call, target)
        # Byte for byte the body of a name that does not exist: existing or not, it is not hers.
        assert (answer.status_code, answer.content) == (404, not_found.content), target
        last = live.decisions[-1]
        assert (last.action, last.actor, last.outcome, last.code, last.resource) == (
            call[0], "mallory", "refused", "kbs.unauthorized", target)
        assert last.owner == "vendor"

    # Nothing of the vendor's changed, and the vendor's own call still works.
    assert live.broker.store.resource_info(ResourceName.parse(RESOURCE)) == before
    with OwnerClient(live.url, vendor) as c:
        assert c.get(RESOURCE)["versions"] == [1, 2]
        assert c.get_policy(RESOURCE)["versions"] == [1, 2]


def test_listing_shows_only_the_callers_own_names(live: Live) -> None:
    provision_vendor(live)
    mallory = live.token("mallory")
    with OwnerClient(live.url, mallory) as c:
        assert c.list_resources() == []
        c.put("kbs:///mallory/data-key/notes")
        assert [r["resource"] for r in c.list_resources()] == ["kbs:///mallory/data-key/notes"]
    listed = [d for d in live.decisions if d.action == "list"]
    assert [(d.actor, d.outcome, d.resource) for d in listed] == [
        ("mallory", "allowed", ""), ("mallory", "allowed", "")]


def test_every_owner_api_call_is_recorded_with_action_owner_and_outcome(live: Live) -> None:
    token = live.token("vendor")
    start = len(live.decisions)
    with OwnerClient(live.url, token) as c:
        c.put(RESOURCE)
        c.get(RESOURCE)
        c.list_resources()
        c.set_policy(RESOURCE, sim_policy())  # answers with the policy it stored: a read too
        c.get_policy(RESOURCE)
        c.rotate(RESOURCE)
        c.retire(RESOURCE, 1)
        c.decisions()
        with pytest.raises(KbsError):
            c.retire(RESOURCE, 2)  # the current version: refused
        c.delete(RESOURCE)
    seen = [(d.action, d.actor, d.outcome, d.code) for d in live.decisions[start:]]
    assert seen == [
        ("create", "vendor", "allowed", None), ("read", "vendor", "allowed", None),
        ("list", "vendor", "allowed", None), ("policy_set", "vendor", "allowed", None),
        ("policy_read", "vendor", "allowed", None), ("policy_read", "vendor", "allowed", None),
        ("rotate", "vendor", "allowed", None), ("retire", "vendor", "allowed", None),
        ("decisions_read", "vendor", "allowed", None),
        ("retire", "vendor", "refused", "kbs.conflict"),
        ("delete", "vendor", "allowed", None),
    ]
    # The store keeps the actor too (what `kbs decisions` shows), newest first.
    stored = live.broker.store.decisions(owner="vendor", limit=len(seen))
    assert [(d.action, d.actor) for d in stored] == [(a, o) for a, o, _, _ in reversed(seen)]
    # An unauthenticated call has no actor: nobody proved who they are.
    httpx.get(live.url + BASE + "/resources", headers=auth("mkt1.vendor.forged"))
    assert (live.decisions[-1].action, live.decisions[-1].actor) == ("authenticate", "")


def test_the_decision_log_shows_an_attempt_to_both_owners_and_to_nobody_else(live: Live) -> None:
    vendor = provision_vendor(live)
    mallory, clinic = live.token("mallory"), live.token("clinic")
    send(live, mallory, CALLS[1], RESOURCE)  # a cross-owner rotate
    with OwnerClient(live.url, vendor) as c:
        attempts = [d for d in c.decisions() if d["actor"] == "mallory"]
    assert [(d["action"], d["outcome"], d["code"]) for d in attempts] == [
        ("rotate", "refused", "kbs.unauthorized")]
    with OwnerClient(live.url, mallory) as c:
        mine = c.decisions()
        assert [(d["action"], d["resource"]) for d in mine] == [("rotate", RESOURCE)]
    with OwnerClient(live.url, clinic) as c:
        assert c.decisions() == []


def test_a_store_from_before_the_actor_column_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(KBS_SCHEMA_1_BEFORE_ACTOR)
    old.execute("INSERT INTO decisions (at, action, resource, owner, outcome, client, detail,"
                " policy_digest, evidence_sha256, checks) VALUES (?, 'release', ?, 'vendor',"
                " 'allowed', 'ip:1', '', '', '', '[]')",
                (datetime(2025, 1, 1, tzinfo=UTC).isoformat(), RESOURCE))
    old.commit()
    old.close()
    for _ in range(2):  # idempotent
        store = SqliteKbsStore(db)
        try:
            store.record_decision(Decision(at=datetime(2025, 1, 2, tzinfo=UTC), action="read",
                                           resource=RESOURCE, outcome="allowed", client="ip:1",
                                           actor="vendor"))
            got = store.decisions(owner="vendor")
        finally:
            store.close()
        assert [d.actor for d in got][-1:] == [""] and got[0].actor == "vendor"
