"""Versioned schema migrations for every SQLite store (issue 16): a database written by the
release before (built here from that release's DDL, tests/ops/old_schemas.py) opens, keeps its
data and is recorded at the current version; a database from a newer release is refused with
``service.schema_newer`` and left byte for byte as it was; the version is read before any write;
a migration that fails leaves the database at the old version."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medclave import migrations
from medclave.audit import AuditLog, verify_log
from medclave.audit.note import NoteSigner
from medclave.audit.store import MemoryLogStore, node_id
from medclave.audit.store import SqliteLogStore as AuditStore
from medclave.auth.replay import SqliteReplayCache
from medclave.client.apikeys import ApiKeyStore
from medclave.errors import MedclaveError
from medclave.kbs.names import ResourceName
from medclave.kbs.sqlite_store import SqliteKbsStore as KbsStore
from medclave.kbs.store import Decision
from tests.ops.old_schemas import (
    APIKEYS_SCHEMA,
    AUDIT_SCHEMA,
    KBS_SCHEMA_1_BEFORE_ACTOR,
    KBS_SCHEMA_2,
    REPLAY_SCHEMA,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RESOURCE = ResourceName.parse("kbs:///vendor/model-key/llama")


def _versions(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")]
    finally:
        db.close()


def _old(path: Path, ddl: str, *rows: tuple[str, tuple[object, ...]]) -> Path:
    db = sqlite3.connect(path)
    db.executescript(ddl)
    for sql, args in rows:
        db.execute(sql, args)
    db.commit()
    db.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the broker ---------------------------------------------------------------------------


def test_a_new_broker_store_records_every_version(tmp_path: Path) -> None:
    KbsStore(tmp_path / "kbs.db").close()
    assert _versions(tmp_path / "kbs.db") == [1, 2, 3]


def test_a_schema_2_broker_store_from_the_last_release_opens_with_its_data(tmp_path: Path
                                                                         ) -> None:
    path = _old(tmp_path / "kbs.db", KBS_SCHEMA_2,
                ("INSERT INTO resources VALUES (?, 'vendor', 1)", (str(RESOURCE),)),
                ("INSERT INTO secret_versions VALUES (?, 1, ?, ?)",
                 (str(RESOURCE), b"wrapped", T0.isoformat())))
    store = KbsStore(path)
    try:
        assert store.secret_version(RESOURCE).wrapped == b"wrapped"
        store.record_decision(Decision(at=T0, action="read", resource=str(RESOURCE),
                                       outcome="allowed", client="ip:1", actor="vendor"))
        assert [d.actor for d in store.decisions(owner="vendor")] == ["vendor"]
    finally:
        store.close()
    assert _versions(path) == [2, 3]  # recorded as it was found, then the revocation lists


def test_a_schema_1_broker_store_before_the_actor_column_is_migrated(tmp_path: Path) -> None:
    path = _old(tmp_path / "kbs.db", KBS_SCHEMA_1_BEFORE_ACTOR,
                ("INSERT INTO decisions (at, action, resource, owner, outcome, client, detail, "
                 "policy_digest, evidence_sha256, checks) VALUES (?, 'release', ?, 'vendor', "
                 "'allowed', 'ip:1', '', '', '', '[]')", (T0.isoformat(), str(RESOURCE))))
    store = KbsStore(path)
    try:
        old = store.decisions(owner="vendor")
        assert [(d.action, d.actor, d.count) for d in old] == [("release", "", 1)]
    finally:
        store.close()
    assert _versions(path) == [1, 2, 3]
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("3",)
    finally:
        db.close()


def _newer(path: Path) -> str:
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version SELECT MAX(version) + 1, '2030-01-01', "
               "'from a newer release' FROM schema_version")
    db.commit()
    db.close()
    return _digest(path)


def _refused_untouched(path: Path, open_store: Callable[[], object]) -> None:
    before = _digest(path)
    with pytest.raises(MedclaveError) as caught:
        open_store()
    assert caught.value.code == "service.schema_newer"
    assert _digest(path) == before


def test_a_newer_broker_store_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "kbs.db"
    KbsStore(path).close()
    _newer(path)
    _refused_untouched(path, lambda: KbsStore(path))
    assert _versions(path) == [1, 2, 3, 4]


# --- the audit log --------------------------------------------------------------------------


def _old_log(path: Path) -> tuple[NoteSigner, bytes]:
    """A log of three entries in the previous release's tables (no schema version)."""
    signer = NoteSigner.generate("medclave.test/old-log")
    log = AuditLog(MemoryLogStore(), origin=signer.name, signer=signer)
    for i in range(3):
        log.append(f"entry {i}".encode())
    mem = log.store
    assert isinstance(mem, MemoryLogStore)
    db = sqlite3.connect(path)
    db.executescript(AUDIT_SCHEMA)
    db.executemany("INSERT INTO entries VALUES (?, ?, ?)",
                   [(i, leaf, data) for i, (data, leaf) in mem.data.items()])
    db.executemany("INSERT INTO nodes VALUES (?, ?)",
                   [(node_id(level, index), h) for (level, index), h in mem.tree.items()])
    db.executemany("INSERT INTO checkpoints VALUES (?, ?)", list(mem.notes.items()))
    db.commit()
    db.close()
    return signer, log.root()


def test_an_audit_log_from_the_last_release_opens_verifies_and_continues(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "audit.sqlite3"
    signer, root = _old_log(path)
    log = AuditLog.resume(AuditStore(path), origin=signer.name, signer=signer)
    try:
        assert log.size == 3 and log.root() == root
        log.append(b"entry 3")
        verify_log(log.store, signer.verifier, origin=signer.name, parse_entries=False)
    finally:
        log.close()
    assert _versions(path) == [1]


def test_a_newer_audit_log_is_refused_untouched_even_read_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    AuditStore(path).close()
    assert _versions(path) == [1]
    _newer(path)
    _refused_untouched(path, lambda: AuditStore(path))
    _refused_untouched(path, lambda: AuditStore(path, readonly=True))


# --- API keys and the replay cache -------------------------------------------------------


def test_api_keys_from_the_last_release_still_authenticate(tmp_path: Path) -> None:
    folder = tmp_path / "proxy"
    folder.mkdir(mode=0o700)
    store = ApiKeyStore(folder)  # make a key with this release, then rebuild the old file
    key, _record = store.add(subject="dr-bob", roles=["clinician"], tenant="st-marys")
    store.close()
    db = sqlite3.connect(folder / "apikeys.db")
    rows = db.execute("SELECT * FROM api_keys").fetchall()
    db.close()
    (folder / "apikeys.db").unlink()
    _old(folder / "apikeys.db", APIKEYS_SCHEMA,
         *[("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(r)) for r in rows])
    (folder / "apikeys.db").chmod(0o600)
    store = ApiKeyStore(folder)
    try:
        found = store.lookup(key)
        assert found is not None and found.subject == "dr-bob"
    finally:
        store.close()
    assert _versions(folder / "apikeys.db") == [1]
    _newer(folder / "apikeys.db")
    _refused_untouched(folder / "apikeys.db", lambda: ApiKeyStore(folder))


def test_a_replay_cache_from_the_last_release_keeps_its_entries(tmp_path: Path) -> None:
    path = _old(tmp_path / "replay.db", REPLAY_SCHEMA,
                ("INSERT INTO replay VALUES ('jti-1', ?)",
                 ((T0 + timedelta(hours=1)).timestamp(),)))
    cache = SqliteReplayCache(path)
    try:
        assert cache.add("jti-1", expires_at=T0 + timedelta(hours=1), now=T0) is False
        assert cache.add("jti-2", expires_at=T0 + timedelta(hours=1), now=T0) is True
    finally:
        cache.close()
    assert _versions(path) == [1]
    _newer(path)
    _refused_untouched(path, lambda: SqliteReplayCache(path))


# --- the mechanism ---------------------------------------------------------------------------


def _traced(path: Path) -> tuple[sqlite3.Connection, list[str]]:
    db = sqlite3.connect(path, isolation_level=None)
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    return db, seen


STEPS = (migrations.Migration(1, "t", migrations.script("CREATE TABLE t (a INTEGER);")),
         migrations.Migration(2, "u", migrations.script(
             "ALTER TABLE t ADD COLUMN b TEXT; CREATE TRIGGER t_ro BEFORE DELETE ON t "
             "BEGIN SELECT RAISE(ABORT, 'no; never'); END;")))


def _legacy(db: sqlite3.Connection) -> int:
    return 1 if "t" in migrations.tables(db) else 0


def test_nothing_is_written_before_the_version_is_read(tmp_path: Path) -> None:
    db, seen = _traced(tmp_path / "x.db")
    migrations.migrate(db, store="x", migrations=STEPS, legacy=_legacy,
                       after_check=lambda d: d.execute("PRAGMA journal_mode=WAL"))
    db.close()
    first_write = next(i for i, s in enumerate(seen)
                       if s.split()[0].upper() in ("PRAGMA", "CREATE", "ALTER", "INSERT", "BEGIN"))
    assert any("sqlite_master" in s for s in seen[:first_write])
    assert _versions(tmp_path / "x.db") == [1, 2]
    # Newer: the trace shows reads only.
    db = sqlite3.connect(tmp_path / "x.db")
    db.execute("INSERT INTO schema_version VALUES (3, 'later', 'newer')")
    db.commit()
    db.close()
    db, seen = _traced(tmp_path / "x.db")
    with pytest.raises(MedclaveError):
        migrations.migrate(db, store="x", migrations=STEPS, legacy=_legacy)
    db.close()
    assert seen and all(s.split()[0].upper() == "SELECT" for s in seen), seen


def test_a_failing_migration_leaves_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(db, store="x", migrations=STEPS[:1], legacy=_legacy)

    def broken(d: sqlite3.Connection) -> None:
        d.execute("ALTER TABLE t ADD COLUMN c TEXT")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        migrations.migrate(db, store="x", migrations=(STEPS[0], migrations.Migration(
            2, "broken", broken)), legacy=_legacy)
    assert [r[1] for r in db.execute("PRAGMA table_info(t)")] == ["a"]
    db.close()
    assert _versions(path) == [1]


def test_migrations_must_be_numbered_in_order() -> None:
    with pytest.raises(ValueError):
        migrations.newest((STEPS[1], STEPS[0]))


def test_a_table_without_a_version_table_is_read_by_its_legacy_rule(tmp_path: Path) -> None:
    path = _old(tmp_path / "x.db", "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (7);")
    db = sqlite3.connect(path, isolation_level=None)
    assert migrations.migrate(db, store="x", migrations=STEPS, legacy=_legacy) == 2
    assert db.execute("SELECT a, b FROM t").fetchall() == [(7, None)]
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("DELETE FROM t")
    db.close()
    assert _versions(path) == [1, 2]
