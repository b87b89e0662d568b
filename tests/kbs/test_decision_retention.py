"""Issue 9 part 3: the decision log does not grow without bound from refusals that cost nothing.

The attack: 300 refused releases (no nonce this broker issued) added 300 permanent rows in about
a second. Refusals of callers who proved nothing are now counted, one row per (minute, action,
resource, code, client), at most ``max_aggregated`` such rows; decisions on owners' resources stay
one row each, for good. Every store (memory, SQLite, PostgreSQL), and the SQLite schema-1 store
migrated forward.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import Decision, KbsStore
from tests.kbs.conftest import BACKENDS, Live, open_backend
from tests.kbs.helpers import RESOURCE

T0 = datetime(2025, 7, 1, 12, 0, 5, tzinfo=UTC)
StoreFactory = Callable[..., KbsStore]
LiveFactory = Callable[..., Live]


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[KbsStore] = []

    def make(**kw: int) -> KbsStore:
        store = open_backend(request.param, request, tmp_path, f"kbs{len(opened)}", **kw)
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


def refusal(at: datetime = T0, *, client: str = "ip:192.0.2.1", code: str = "kbs.nonce_unknown",
            resource: str = RESOURCE, **kw: object) -> Decision:
    return Decision(at=at, action="release", resource=resource, outcome="refused",
                    client=client, code=code, detail="no such nonce", **kw)  # type: ignore[arg-type]


def all_rows(store: KbsStore) -> list[Decision]:
    return store.decisions(limit=10_000)


def release_body(nonce: str = "00" * 32) -> dict[str, object]:
    return {"resource": RESOURCE, "nonce": nonce,
            "evidence": {"platform": "sim", "evidence": "AA==", "nonce": "", "runtime": {}}}


# --- over HTTP: the attack as reported ---------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_300_refused_releases_add_a_bounded_number_of_rows(
        live_factory: LiveFactory, tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    store = open_backend(kind, request, tmp_path)
    live = live_factory(store=store)
    with httpx.Client(base_url=live.url, timeout=10.0) as client:
        unknown = [client.post("/kbs/v1/release", json=release_body(f"{i:064x}")).status_code
                   for i in range(200)]
        malformed = [client.post("/kbs/v1/release", content=b"{").status_code for _ in range(100)]
    assert set(unknown) == {400} and set(malformed) == {400}
    rows = all_rows(store)
    # The broker's clock is fixed (conftest): one minute, one client, two codes -> two rows.
    assert sorted((d.code, d.resource, d.count) for d in rows) == [
        ("input.malformed", "", 100), ("kbs.nonce_unknown", RESOURCE, 200)]
    assert {d.client for d in rows} == {"ip:127.0.0.1"}
    # The owner of the named resource still sees the attempts on it, as a count.
    with httpx.Client(base_url=live.url) as client:
        seen = client.get("/kbs/v1/owner/decisions",
                          headers={"Authorization": f"Bearer {live.token('vendor')}"}).json()
    assert [(d["code"], d["count"]) for d in seen] == [("kbs.nonce_unknown", 200)]
    assert len(live.decisions) == 301  # the operator's hook still sees each one (+ the read)
    store.close()


# --- the store contract ----------------------------------------------------------------------


def test_refusals_are_counted_per_minute_client_code_and_resource(make_store: StoreFactory
                                                                 ) -> None:
    store = make_store()
    for at in (T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)):  # 12:00, 12:00, 12:01
        store.record_decision(refusal(at))
    store.record_decision(refusal(client="ip:192.0.2.2"))
    store.record_decision(refusal(code="kbs.nonce_replayed"))
    store.record_decision(refusal(resource="kbs:///other/model-key/x"))
    store.record_decision(Decision(at=T0, action="authenticate", resource="/kbs/v1/owner/x",
                                   outcome="refused", client="ip:192.0.2.1",
                                   code="auth.invalid_credentials"))
    store.record_decision(Decision(at=T0, action="authenticate", resource="/kbs/v1/owner/x",
                                   outcome="refused", client="ip:192.0.2.1",
                                   code="auth.invalid_credentials"))
    rows = all_rows(store)
    got = sorted((d.at.minute, d.action, d.resource, d.code, d.client, d.count) for d in rows)
    assert got == sorted([
        (0, "authenticate", "/kbs/v1/owner/x", "auth.invalid_credentials", "ip:192.0.2.1", 2),
        (0, "release", RESOURCE, "kbs.nonce_replayed", "ip:192.0.2.1", 1),
        (0, "release", RESOURCE, "kbs.nonce_unknown", "ip:192.0.2.1", 2),
        (0, "release", RESOURCE, "kbs.nonce_unknown", "ip:192.0.2.2", 1),
        (0, "release", "kbs:///other/model-key/x", "kbs.nonce_unknown", "ip:192.0.2.1", 1),
        (1, "release", RESOURCE, "kbs.nonce_unknown", "ip:192.0.2.1", 1),
    ])
    first = next(d for d in rows if d.code == "kbs.nonce_unknown" and d.count == 2)
    assert first.at == T0 and first.detail == "no such nonce"  # the first request's record
    assert [d.count for d in store.decisions(owner="other")] == [1]


def test_decisions_on_owners_resources_are_never_aggregated(make_store: StoreFactory) -> None:
    store = make_store()
    kept = [
        Decision(at=T0, action="release", resource=RESOURCE, outcome="allowed",
                 client="ip:192.0.2.1", checks=("signature:ok", "binding:ok")),
        # A real TEE turned away by the policy: its evidence verified.
        refusal(code="policy.refused", checks=("signature:ok", "binding:ok")),
        # An authenticated owner's refused call.
        Decision(at=T0, action="rotate", resource=RESOURCE, outcome="refused",
                 client="ip:192.0.2.1", code="kbs.unauthorized", actor="mallory"),
        Decision(at=T0, action="read", resource=RESOURCE, outcome="allowed",
                 client="ip:192.0.2.1", actor="vendor"),
    ]
    for decision in kept * 3:
        store.record_decision(decision)
    rows = all_rows(store)
    assert len(rows) == 12 and {d.count for d in rows} == {1}
    # Evidence that did not verify proves nothing: counted.
    for _ in range(3):
        store.record_decision(refusal(code="attestation.signature_invalid",
                                      checks=("parse:ok", "signature:failed")))
    assert len(all_rows(store)) == 13


def test_aggregate_rows_are_capped_and_permanent_rows_are_not(make_store: StoreFactory) -> None:
    store = make_store(max_aggregated=5)
    allowed = Decision(at=T0, action="release", resource=RESOURCE, outcome="allowed",
                       client="ip:192.0.2.1", checks=("signature:ok",))
    store.record_decision(allowed)
    for i in range(20):  # an attacker varying the name makes a new aggregate row each time
        store.record_decision(refusal(resource=f"kbs:///vendor/model-key/m{i}"))
    store.record_decision(allowed)
    rows = all_rows(store)
    aggregated = [d.resource for d in rows if d.outcome == "refused"]
    assert aggregated == [f"kbs:///vendor/model-key/m{i}" for i in (19, 18, 17, 16, 15)]
    assert [d.outcome for d in rows].count("allowed") == 2


# --- the SQLite schema-1 store ----------------------------------------------------------------

# The decisions table as schema 1 had it (the actor column was added in place, schema still 1).
_V1_DECISIONS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, action TEXT NOT NULL,
    resource TEXT NOT NULL, owner TEXT NOT NULL, outcome TEXT NOT NULL, client TEXT NOT NULL,
    code TEXT, version INTEGER, detail TEXT NOT NULL, policy_digest TEXT NOT NULL,
    evidence_sha256 TEXT NOT NULL, checks TEXT NOT NULL, actor TEXT NOT NULL DEFAULT '');
CREATE INDEX decisions_owner ON decisions (owner, id);
INSERT INTO meta VALUES ('schema', '1');
"""


def test_a_schema_1_store_is_migrated_forward(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    old = sqlite3.connect(db)
    old.executescript(_V1_DECISIONS)
    for _ in range(2):
        old.execute("INSERT INTO decisions (at, action, resource, owner, outcome, client, code,"
                    " detail, policy_digest, evidence_sha256, checks) VALUES (?, 'release', ?,"
                    " 'vendor', 'refused', 'ip:1', 'kbs.nonce_unknown', '', '', '', ?)",
                    (T0.isoformat(), RESOURCE, json.dumps([])))
    old.commit()
    old.close()
    for reopen in range(2):  # the migration is idempotent
        store = SqliteKbsStore(db)
        try:
            store.record_decision(refusal(client="ip:1"))
            rows = store.decisions(limit=100)
        finally:
            store.close()
        # The two schema-1 rows stay rows of their own (count 1); the new refusal aggregates.
        assert [d.count for d in rows] == [reopen + 1, 1, 1]
    check = sqlite3.connect(db)
    try:
        # Migration 2 (retention), then 3 (revocation lists).
        assert check.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("3",)
    finally:
        check.close()
