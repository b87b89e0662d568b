"""Entries: canonical bytes, commitments the tenant can open, and no room for PHI."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from medclave.audit.entry import (
    AuditEntry,
    commit,
    entry_bytes,
    format_time,
    open_commitment,
    parse_entry,
    pseudonym,
)
from medclave.errors import AuditError
from tests.audit._builders import TENANT_KEY, make_entry


def test_canonical_round_trip() -> None:
    entry = make_entry(3)
    data = entry.to_bytes()
    assert parse_entry(data) == entry
    assert json.loads(data) == entry.model_dump(mode="json")
    assert entry_bytes(json.loads(data)) == data
    spaced = json.dumps(json.loads(data), indent=1).encode()
    with pytest.raises(AuditError) as err:
        parse_entry(spaced)  # same content, not canonical: refused
    assert err.value.code == "audit.entry_invalid"


def test_no_place_for_phi() -> None:
    base = make_entry(1).model_dump(mode="json")
    assert AuditEntry.model_validate_json(json.dumps(base)) == make_entry(1)
    for change in (
        {"prompt_text": "Patient John Smith, 54, HIV positive"},  # unknown field
        {"request_id": "John Smith"},  # spaces are not in a token
        {"authorization": {"decision": "allow", "reason": "treating John for HIV"}},
        {"user": "dr.jones@st-mary.example"},  # a raw identity, not a pseudonym
        {"prompt": "Summarise the chart"},
        {"engine_build": "x" * 200},
        {"params": {**base["params"], "temperature": "0.7"}},
        {"break_glass": "false"},
    ):
        with pytest.raises(ValidationError):
            AuditEntry.model_validate_json(json.dumps({**base, **change}))
    with pytest.raises(ValidationError):
        AuditEntry.model_validate_json(json.dumps(base).replace("0.7", "NaN"))
    with pytest.raises(AuditError):
        parse_entry(json.dumps({**base, "note": "PHI"}, sort_keys=True,
                               separators=(",", ":")).encode())


def test_commitments_open_only_with_key_salt_and_data() -> None:
    entry = make_entry(2, prompt="What is the dose of tenofovir?")
    open_commitment(TENANT_KEY, "prompt", entry.salt, b"What is the dose of tenofovir?",
                    entry.prompt)
    for key, label, salt, data in (
        (bytes(32), "prompt", entry.salt, b"What is the dose of tenofovir?"),
        (TENANT_KEY, "answer", entry.salt, b"What is the dose of tenofovir?"),
        (TENANT_KEY, "prompt", "00" * 16, b"What is the dose of tenofovir?"),
        (TENANT_KEY, "prompt", entry.salt, b"What is the dose of tenofovir? "),
    ):
        with pytest.raises(AuditError) as err:
            open_commitment(key, label, salt, data, entry.prompt)  # type: ignore[arg-type]
        assert err.value.code == "audit.commitment_mismatch"
    # The same prompt in two entries gives unlinkable commitments (per-entry salt).
    other = make_entry(3, prompt="What is the dose of tenofovir?")
    assert other.prompt != entry.prompt
    # Pseudonyms are stable per tenant key, and differ across keys and kinds.
    assert pseudonym(TENANT_KEY, "user", "dr-1") == pseudonym(TENANT_KEY, "user", "dr-1")
    assert pseudonym(TENANT_KEY, "user", "dr-1") != pseudonym(bytes(range(32)), "user", "dr-1")
    assert pseudonym(TENANT_KEY, "user", "x") != pseudonym(TENANT_KEY, "patient", "x")
    with pytest.raises(AuditError):
        commit(b"short", "prompt", entry.salt, b"x")


def test_time_format() -> None:
    with pytest.raises(AuditError):
        format_time(datetime(2025, 1, 1))  # naive: refused
    assert format_time(datetime.fromisoformat("2025-01-01T10:00:00+02:00")) == (
        "2025-01-01T08:00:00.000000Z")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_not_an_entry(data: bytes) -> None:
    with pytest.raises(AuditError):
        parse_entry(data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_entry_is_refused_or_canonical(data: st.DataObject) -> None:
    raw = bytearray(make_entry(5).to_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        got = parse_entry(bytes(raw))
    except AuditError:
        return
    assert got.to_bytes() == bytes(raw)  # whatever parses is exactly its canonical form


def test_oversized_and_duplicate_keys_refused() -> None:
    with pytest.raises(AuditError):
        parse_entry(b"{" + b" " * 20_000 + b"}")
    data = make_entry(1).to_bytes()
    twice = b'{"break_glass":true,' + data[1:]  # a second break_glass key, parsers disagree
    with pytest.raises(AuditError) as err:
        parse_entry(twice)
    assert err.value.code == "audit.entry_invalid"
