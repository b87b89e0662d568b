"""Entries for refused requests (no content at all) and the policy ids of every decision."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from medclave.audit import parse_commitment_key, parse_entry
from medclave.audit.entry import AuditEntry, Authorization, generate_commitment_key
from medclave.audit.fhir import audit_event
from medclave.audit.replay import ReplayEngine, replay
from medclave.errors import AuditError, InputError
from tests.audit._builders import BUILD, MODEL, ORIGIN, TENANT_KEY, fake_engine, make_entry


def _refusal() -> AuditEntry:
    base = make_entry(3, decision="deny").model_dump()
    base.update(prompt=None, params=None, answer=None, documents=(), authorization=Authorization(
        decision="deny", reason="tenant-isolation", policies=("tenant-isolation",)))
    return AuditEntry(**base)


def test_a_refusal_entry_holds_no_content_and_round_trips() -> None:
    entry = _refusal()
    data = entry.to_bytes()
    assert parse_entry(data) == entry
    doc = json.loads(data)
    assert doc["prompt"] is None and doc["params"] is None and doc["answer"] is None
    assert doc["authorization"]["policies"] == ["tenant-isolation"]
    event = audit_event(entry, 3, origin=ORIGIN)
    details = {d["type"] for e in event["entity"] for d in e.get("detail", [])}
    assert "prompt_commitment" not in details and "params" not in details
    assert "policies" in details and event["outcome"] == "4"
    with pytest.raises(AuditError) as err:
        replay(entry, "anything", ReplayEngine(fake_engine, MODEL, BUILD), TENANT_KEY)
    assert err.value.code == "audit.replay_mismatch"


def test_an_allowed_entry_must_say_what_ran() -> None:
    base = make_entry(4).model_dump(mode="json")
    for change in ({"prompt": None, "answer": None}, {"params": None},
                   {"authorization": {"decision": "deny", "reason": "x", "policies": []},
                    "prompt": None},  # an answer without its prompt
                   {"authorization": {"decision": "allow", "reason": "x",
                                      "policies": ["Not A Code"]}}):
        with pytest.raises(ValidationError):
            AuditEntry.model_validate_json(json.dumps({**base, **change}))


def test_commitment_keys_are_read_alike_everywhere() -> None:
    key = generate_commitment_key()
    assert key.endswith(b"\n") and len(key) == 65
    assert parse_commitment_key(key) == parse_commitment_key(b"  " + key.strip()) == key.strip()
    for bad in (b"", b"short\n", b" " * 40, b"k" * 2000):
        with pytest.raises(InputError):
            parse_commitment_key(bad)
