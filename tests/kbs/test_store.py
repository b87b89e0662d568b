"""The KbsStore contract, run against the in-memory, SQLite and PostgreSQL implementations alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medclave.errors import KbsError, MedclaveError
from medclave.kbs.names import ResourceName
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import NONCE_MEMORY, Decision, KbsStore, NonceState

T0 = datetime(2025, 7, 1, 12, tzinfo=UTC)
R = ResourceName.parse("kbs:///vendor/model-key/llama")
OTHER = ResourceName.parse("kbs:///hospital/data-key/notes")


def code_of(exc: pytest.ExceptionInfo[KbsError]) -> str:
    return exc.value.code


def test_create_then_rotate_keeps_previous_versions(store: KbsStore) -> None:
    assert store.create_secret(R, b"w1", T0) == 1
    assert store.rotate_secret(R, b"w2", T0, expected_version=1) == 2
    assert store.secret_version(R).wrapped == b"w2"
    assert store.secret_version(R, 1).wrapped == b"w1"
    info = store.resource_info(R)
    assert info is not None and info.current == 2 and info.versions == (1, 2)


def test_create_twice_is_a_conflict(store: KbsStore) -> None:
    store.create_secret(R, b"w1", T0)
    with pytest.raises(KbsError) as e:
        store.create_secret(R, b"again", T0)
    assert code_of(e) == "kbs.conflict"
    assert store.secret_version(R).wrapped == b"w1"


def test_rotate_with_a_stale_version_is_a_conflict_and_changes_nothing(store: KbsStore) -> None:
    store.create_secret(R, b"w1", T0)
    store.rotate_secret(R, b"w2", T0, expected_version=1)
    with pytest.raises(KbsError) as e:
        store.rotate_secret(R, b"w3", T0, expected_version=1)
    assert code_of(e) == "kbs.conflict"
    assert store.secret_version(R).version == 2


def test_unknown_resource_and_version(store: KbsStore) -> None:
    for call in (lambda: store.secret_version(R), lambda: store.rotate_secret(R, b"x", T0, 1),
                 lambda: store.delete_resource(R)):
        with pytest.raises(KbsError) as e:
            call()
        assert code_of(e) == "kbs.not_found"
    store.create_secret(R, b"w1", T0)
    with pytest.raises(KbsError) as e:
        store.secret_version(R, 7)
    assert code_of(e) == "kbs.not_found"
    assert store.resource_info(OTHER) is None


def test_retire_old_version_but_never_the_current(store: KbsStore) -> None:
    store.create_secret(R, b"w1", T0)
    with pytest.raises(KbsError) as e:
        store.retire_secret_version(R, 1)
    assert code_of(e) == "kbs.conflict"
    store.rotate_secret(R, b"w2", T0, 1)
    store.retire_secret_version(R, 1)
    with pytest.raises(KbsError) as e:
        store.secret_version(R, 1)
    assert code_of(e) == "kbs.not_found"
    with pytest.raises(KbsError) as e:
        store.retire_secret_version(R, 1)
    assert code_of(e) == "kbs.not_found"
    # Versions keep counting up after a retirement: no number is ever reused.
    assert store.rotate_secret(R, b"w3", T0, 2) == 3


def test_list_is_per_owner(store: KbsStore) -> None:
    store.create_secret(R, b"w", T0)
    store.create_secret(OTHER, b"w", T0)
    assert [i.resource for i in store.list_resources("vendor")] == [str(R)]
    assert [i.resource for i in store.list_resources("hospital")] == [str(OTHER)]
    assert store.list_resources("nobody") == []


def test_delete_removes_versions_and_policies(store: KbsStore) -> None:
    store.create_secret(R, b"w", T0)
    store.put_policy(R, "{}", "d", T0)
    store.delete_resource(R)
    assert store.resource_info(R) is None
    with pytest.raises(KbsError) as e:
        store.policy_version(R)
    assert code_of(e) == "kbs.policy_missing"


def test_policies_are_versioned(store: KbsStore) -> None:
    with pytest.raises(KbsError) as e:
        store.policy_version(R)
    assert code_of(e) == "kbs.policy_missing"
    assert store.put_policy(R, '{"a":1}', "d1", T0) == 1
    assert store.put_policy(R, '{"a":2}', "d2", T0, expected_version=1) == 2
    with pytest.raises(KbsError) as e:
        store.put_policy(R, '{"a":3}', "d3", T0, expected_version=1)
    assert code_of(e) == "kbs.conflict"
    assert store.policy_version(R).digest == "d2"
    assert store.policy_version(R, 1).document == '{"a":1}'
    assert store.policy_versions(R) == (1, 2)
    with pytest.raises(KbsError) as e:
        store.retire_policy_version(R, 2)
    assert code_of(e) == "kbs.conflict"
    store.retire_policy_version(R, 1)
    assert store.policy_versions(R) == (2,)


def test_nonce_states(store: KbsStore) -> None:
    n1, n2 = b"\x01" * 32, b"\x02" * 32
    store.add_nonce(n1, T0 + timedelta(seconds=60), T0)
    store.add_nonce(n2, T0 + timedelta(seconds=60), T0)
    assert store.spend_nonce(b"\x03" * 32, T0) is NonceState.UNKNOWN
    assert store.spend_nonce(n1, T0 + timedelta(seconds=59)) is NonceState.FRESH
    assert store.spend_nonce(n1, T0 + timedelta(seconds=59)) is NonceState.USED
    assert store.spend_nonce(n2, T0 + timedelta(seconds=60)) is NonceState.EXPIRED
    assert store.spend_nonce(n2, T0 + timedelta(seconds=61)) is NonceState.USED


def test_old_nonces_are_purged(store: KbsStore) -> None:
    old = b"\x04" * 32
    store.add_nonce(old, T0, T0 - timedelta(seconds=60))
    later = T0 + NONCE_MEMORY + timedelta(seconds=1)
    store.add_nonce(b"\x05" * 32, later + timedelta(seconds=60), later)
    assert store.spend_nonce(old, later) is NonceState.UNKNOWN


def test_decisions_filter_by_owner_and_resource(store: KbsStore) -> None:
    for res, outcome in ((R, "allowed"), (OTHER, "refused"), (R, "refused")):
        store.record_decision(Decision(at=T0, action="release", resource=str(res),
                                       outcome=outcome, client="ip:127.0.0.1",  # type: ignore[arg-type]
                                       code=None if outcome == "allowed" else "kbs.nonce_expired",
                                       checks=("signature:ok",)))
    mine = store.decisions(owner="vendor")
    assert [d.outcome for d in mine] == ["refused", "allowed"]  # newest first
    assert mine[0].code == "kbs.nonce_expired" and mine[0].checks == ("signature:ok",)
    assert len(store.decisions(resource=str(OTHER))) == 1
    assert len(store.decisions(limit=1)) == 1


def test_owner_tokens(store: KbsStore) -> None:
    store.add_owner_token("vendor", b"h" * 32, T0)
    assert store.owner_token_hashes("vendor") == (b"h" * 32,)
    assert store.owner_token_hashes("other") == ()
    assert store.revoke_owner_tokens("vendor") == 1
    assert store.owner_token_hashes("vendor") == ()


def test_sqlite_survives_reopen_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "kbs.db"
    s = SqliteKbsStore(path)
    s.create_secret(R, b"w1", T0)
    s.rotate_secret(R, b"w2", T0, 1)
    s.close()
    s = SqliteKbsStore(path)
    try:
        assert s.secret_version(R).wrapped == b"w2"
        assert s.secret_version(R, 1).wrapped == b"w1"
        assert s._read("PRAGMA journal_mode")[0][0] == "wal"
    finally:
        s.close()


def test_sqlite_refuses_a_foreign_schema(tmp_path: Path) -> None:
    path = tmp_path / "kbs.db"
    SqliteKbsStore(path).close()
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (99, '2030-01-01', 'from a newer release')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(MedclaveError) as e:
        SqliteKbsStore(path)
    assert code_of(e) == "service.schema_newer"
    assert path.read_bytes() == before  # refused untouched


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    s = SqliteKbsStore(tmp_path / "kbs.db")
    try:
        s.create_secret(R, b"w1", T0)
        for f in tmp_path.iterdir():
            assert f.stat().st_mode & 0o077 == 0, f.name
    finally:
        s.close()
