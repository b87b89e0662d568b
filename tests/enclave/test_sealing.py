"""Sealed conversations at rest, on SQLite on disk and on PostgreSQL: only the owner with their
share opens; every way the operator can tamper with the rows (drop, reorder, replay, alter, roll
back) is detected; the store holds no plaintext; sealing-root rotation keeps old versions
readable."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.enclave.sealing import format as fmt
from medclave.enclave.sealing.conversations import SealedConversations, parse_share
from medclave.enclave.sealing.pgstore import MIGRATIONS, PostgresSealedStore
from medclave.enclave.sealing.roots import BrokerSealingRoots, FileSealingRoots, SealingRoot
from medclave.enclave.sealing.store import MemorySealedStore, SealedStore, SqliteSealedStore
from medclave.errors import InputError, MedclaveError, SealingError

TENANT = "st-marys"
WORDS = "I keep thinking about the bridge on Harrow Street"


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at


class Broker:
    """A stand-in for the broker's versions of one tenant's root (the real broker path is
    tested in tests/e2e/test_triage_broker.py)."""

    def __init__(self) -> None:
        self.versions: dict[int, bytes] = {1: os.urandom(32)}
        self.fetches: list[tuple[str, int | None]] = []

    def __call__(self, tenant: str, version: int | None) -> SealingRoot:
        self.fetches.append((tenant, version))
        wanted = max(self.versions, default=0) if version is None else version
        if wanted not in self.versions:
            raise SealingError("sealing.root_unavailable", "retired")
        return SealingRoot(wanted, self.versions[wanted])


@dataclass
class Db:
    """A durable store to open, and the operator's raw access to it (SQLite's spelling:
    tables ``conversations`` and ``turns``, ``?`` parameters; translated for PostgreSQL)."""

    kind: str
    where: str

    def open(self) -> SealedStore:
        if self.kind == "sqlite":
            return SqliteSealedStore(Path(self.where))
        return PostgresSealedStore(self.where)

    def execute(self, sql: str, *args: object) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.where) as raw:
                raw.execute(sql, args)
            return
        with psycopg.connect(self.where, autocommit=True) as conn:
            conn.execute("ALTER TABLE sealed_turns DISABLE TRIGGER USER")
            conn.execute(re.sub(r"\b(conversations|turns)\b", r"sealed_\1", sql)
                         .replace("?", "%s"), args)

    def raw(self) -> bytes:
        """Everything the operator can read: the files, or every row of every table."""
        if self.kind == "sqlite":
            folder = Path(self.where).parent
            return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
        with psycopg.connect(self.where) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE "
                                                 "schemaname = 'public'")]
            return b"".join(str(row).encode() + b"".join(
                bytes(v) for v in row if isinstance(v, bytes | memoryview))
                for t in tables for row in conn.execute(f"SELECT * FROM {t}"))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return Db("sqlite", str(tmp_path / "sealed.sqlite3"))
    return Db("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture
def world(db: Db) -> Iterator[tuple[SealedConversations, Broker, Clock]]:
    broker, clock = Broker(), Clock()
    store = db.open()
    yield SealedConversations(BrokerSealingRoots(broker, clock=clock), store, clock=clock), \
        broker, clock
    store.close()


def _filled(sealed: SealedConversations, share: bytes, turns: int = 3,
            subject: str = "patient-1") -> str:
    conv = sealed.create(TENANT, subject, share, {"consent": "level"}).conversation
    for i in range(turns):
        sealed.append(TENANT, subject, conv, share, {"role": "user", "content": f"{WORDS} {i}"})
    return conv


def test_the_owner_reopens_every_turn_in_order(world: tuple[SealedConversations, Broker, Clock]
                                                ) -> None:
    sealed, _, _ = world
    share = os.urandom(32)
    conv = _filled(sealed, share)
    opened = sealed.open(TENANT, "patient-1", conv, share)
    assert [t["content"] for t in opened.turns] == [f"{WORDS} {i}" for i in range(3)]
    assert opened.meta == {"consent": "level", "created": int(Clock().at.timestamp())}
    assert len(opened.chains) == 3 and opened.public()["chain"] == opened.chains[-1]
    summary = sealed.list(TENANT, "patient-1", share)
    assert [(s.conversation, s.readable, s.turns) for s in summary] == [(conv, True, 3)]


def test_anyone_else_gets_not_found(world: tuple[SealedConversations, Broker, Clock]) -> None:
    sealed, _, _ = world
    share = os.urandom(32)
    conv = _filled(sealed, share)
    attempts = [("patient-2", TENANT, share), ("patient-1", TENANT, os.urandom(32)),
                ("patient-1", "other-clinic", share)]
    for subject, tenant, key in attempts:
        with pytest.raises(SealingError) as refused:
            sealed.open(tenant, subject, conv, key)
        assert refused.value.code == "sealing.not_found"
    # A conversation that does not exist reads the same.
    with pytest.raises(SealingError, match=r"sealing\.not_found"):
        sealed.open(TENANT, "patient-1", "conv_" + "0" * 32, share)
    # Another patient cannot append to it or delete it either.
    with pytest.raises(SealingError, match=r"sealing\.not_found"):
        sealed.append(TENANT, "patient-2", conv, share, {"content": "x"})
    with pytest.raises(SealingError, match=r"sealing\.not_found"):
        sealed.delete(TENANT, "patient-2", conv)
    # Listed unreadable for the owner with another share (another device), readable with hers.
    assert [s.readable for s in sealed.list(TENANT, "patient-1", os.urandom(32))] == [False]
    assert sealed.list(TENANT, "patient-2", share) == []


def test_shares_are_32_bytes_of_base64url() -> None:
    share = os.urandom(32)
    assert parse_share(base64.urlsafe_b64encode(share).rstrip(b"=").decode()) == share
    for bad in (None, "", "!!!", base64.urlsafe_b64encode(b"x" * 31).decode(), "A" * 100):
        with pytest.raises(SealingError, match=r"sealing\.share_missing"):
            parse_share(bad)


def test_the_store_holds_no_plaintext(world: tuple[SealedConversations, Broker, Clock],
                                      db: Db) -> None:
    sealed, _, _ = world
    _filled(sealed, os.urandom(32), subject="patient-secret-subject")
    data = db.raw()
    assert len(data) > 1000  # the rows are there, sealed
    for word in ("bridge", "Harrow", "thinking", "patient-secret-subject", "consent"):
        assert word.encode() not in data


def _tamper(db: Db, sql: str, *args: object) -> None:
    db.execute(sql, *args)


@pytest.mark.parametrize("attack", ["drop_last", "drop_middle", "reorder", "replay_other",
                                    "duplicate", "flip_byte", "rollback_head"])
def test_tampering_at_rest_is_detected(world: tuple[SealedConversations, Broker, Clock],
                                       db: Db, attack: str) -> None:
    sealed, _, _ = world
    share = os.urandom(32)
    conv = _filled(sealed, share, turns=4)
    other = _filled(sealed, share, turns=2)
    store = sealed.store
    turns = dict(store.turns(TENANT, conv))
    if attack == "drop_last":
        _tamper(db, "DELETE FROM turns WHERE conversation=? AND idx=3", conv)
    elif attack == "drop_middle":
        _tamper(db, "DELETE FROM turns WHERE conversation=? AND idx=1", conv)
        _tamper(db, "UPDATE turns SET idx=idx-1 WHERE conversation=? AND idx>1", conv)
        # keep the count right: the head would otherwise give it away by itself
        _tamper(db, "INSERT INTO turns VALUES (?, ?, 3, ?)", TENANT, conv, turns[3])
    elif attack == "reorder":
        _tamper(db, "UPDATE turns SET record=? WHERE conversation=? AND idx=1", turns[2], conv)
        _tamper(db, "UPDATE turns SET record=? WHERE conversation=? AND idx=2", turns[1], conv)
    elif attack == "replay_other":
        _tamper(db, "UPDATE turns SET record=? WHERE conversation=? AND idx=1",
                dict(store.turns(TENANT, other))[1], conv)
    elif attack == "duplicate":
        _tamper(db, "UPDATE turns SET record=? WHERE conversation=? AND idx=3", turns[2], conv)
    elif attack == "flip_byte":
        record = bytearray(turns[2])
        record[20] ^= 1
        _tamper(db, "UPDATE turns SET record=? WHERE conversation=? AND idx=2", bytes(record),
                conv)
    elif attack == "rollback_head":
        # The head from before the last turn (a copy the operator kept), turns left in place.
        old_head = fmt.seal(sealed.open(TENANT, "patient-1", conv, share).key,
                            {"chain": sealed.open(TENANT, "patient-1", conv, share).chains[2],
                             "meta": {}, "turns": 3},
                            fmt.head_aad(TENANT, "patient-1", conv))
        _tamper(db, "UPDATE conversations SET head=? WHERE conversation=?", old_head, conv)
    with pytest.raises(SealingError) as refused:
        sealed.open(TENANT, "patient-1", conv, share)
    assert refused.value.code == "sealing.integrity_failed"
    sealed.open(TENANT, "patient-1", other, share)  # the other conversation is untouched


def test_rotation_keeps_old_versions_readable(world: tuple[SealedConversations, Broker, Clock]
                                              ) -> None:
    sealed, broker, clock = world
    share = os.urandom(32)
    old = _filled(sealed, share, turns=1)
    broker.versions[2] = os.urandom(32)
    # Within the cache's life the current version is still 1; after it, new ones take 2.
    assert sealed.create(TENANT, "patient-1", share, {}).root_version == 1
    clock.at += timedelta(minutes=6)
    new = sealed.create(TENANT, "patient-1", share, {})
    assert new.root_version == 2
    sealed.append(TENANT, "patient-1", old, share, {"content": "after rotation"})
    reopened = sealed.open(TENANT, "patient-1", old, share)
    assert reopened.root_version == 1 and len(reopened.turns) == 2
    assert {s.conversation for s in sealed.list(TENANT, "patient-1", share)} >= {
        old, new.conversation}
    # Retiring version 1 at the broker makes what it sealed unreadable, in a fresh enclave.
    del broker.versions[1]
    fresh = SealedConversations(BrokerSealingRoots(broker, clock=clock), sealed.store,
                                clock=clock)
    with pytest.raises(SealingError, match=r"sealing\.root_unavailable"):
        fresh.open(TENANT, "patient-1", old, share)


def test_a_refused_root_is_asked_again_only_after_a_while() -> None:
    broker, clock = Broker(), Clock()
    broker.versions.clear()
    roots = BrokerSealingRoots(broker, clock=clock)
    for _ in range(3):
        with pytest.raises(SealingError, match=r"sealing\.root_unavailable"):
            roots.root(TENANT)
    assert len(broker.fetches) == 1
    clock.at += timedelta(seconds=31)
    with pytest.raises(SealingError):
        roots.root(TENANT)
    assert len(broker.fetches) == 2


def test_delete_removes_the_records(world: tuple[SealedConversations, Broker, Clock],
                                    db: Db) -> None:
    sealed, _, _ = world
    share = os.urandom(32)
    conv = _filled(sealed, share)
    records = [r for _, r in sealed.store.turns(TENANT, conv)]
    sealed.delete(TENANT, "patient-1", conv)
    with pytest.raises(SealingError, match=r"sealing\.not_found"):
        sealed.open(TENANT, "patient-1", conv, share)
    # SQLite: secure_delete zeroed the pages. PostgreSQL: the rows are gone from every table
    # (dead tuples wait for VACUUM in its files: docs/scaling-out.md).
    assert not any(r[13:45] in db.raw() for r in records)


def test_the_development_root_file_is_per_tenant(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32).hex().encode() + b"\n")
    os.close(fd)
    roots = FileSealingRoots(path)
    assert roots.root("a").key != roots.root("b").key and roots.root("a").version == 1
    with pytest.raises(SealingError):
        roots.root("a", 2)
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match=r"config\.invalid"):
        FileSealingRoots(path)


def test_memory_store_behaves_like_sqlite() -> None:
    clock = Clock()
    sealed = SealedConversations(BrokerSealingRoots(Broker(), clock=clock), MemorySealedStore(),
                                 clock=clock)
    share = os.urandom(32)
    conv = _filled(sealed, share, turns=2)
    assert len(sealed.open(TENANT, "patient-1", conv, share).turns) == 2
    sealed.delete(TENANT, "patient-1", conv)
    assert sealed.list(TENANT, "patient-1", share) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=64))
def test_untrusted_records_fail_only_with_the_code(record: bytes, aad: bytes) -> None:
    try:
        fmt.open_record(b"k" * 32, record, aad)
    except MedclaveError as exc:
        assert exc.code == "sealing.integrity_failed"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=100)))
def test_untrusted_shares_fail_only_with_the_code(text: str | None) -> None:
    try:
        assert len(parse_share(text)) == 32
    except MedclaveError as exc:
        assert exc.code == "sealing.share_missing"


def test_postgres_refuses_a_newer_schema_untouched(pg_url: str) -> None:
    PostgresSealedStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO medclave_schema VALUES ('sealed', %s, 'later', 'future')",
                     (len(MIGRATIONS) + 1,))
    with pytest.raises(MedclaveError) as err:
        PostgresSealedStore(pg_url)
    assert err.value.code == "service.schema_newer"


def test_postgres_turns_are_never_rewritten(pg_url: str) -> None:
    clock = Clock()
    store = PostgresSealedStore(pg_url)
    sealed = SealedConversations(BrokerSealingRoots(Broker(), clock=clock), store, clock=clock)
    conv = _filled(sealed, os.urandom(32), turns=2)
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE sealed_turns SET record = record WHERE conversation = %s", (conv,))
    assert len(store.turns(TENANT, conv)) == 2
    store.close()


def test_two_replicas_appending_one_turn_index_leave_one(pg_url: str) -> None:
    """Replicas a and b append turn 2 of one conversation at once: a's commit wins, b's turn and
    head are both refused (the head row's lock, then the primary key), and the conversation
    still opens whole."""
    clock = Clock()
    a_store, b_store = PostgresSealedStore(pg_url), PostgresSealedStore(pg_url)
    a = SealedConversations(BrokerSealingRoots(Broker(), clock=clock), a_store, clock=clock)
    share = os.urandom(32)
    conv = _filled(a, share, turns=2)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT owner, head FROM sealed_conversations WHERE conversation = %s",
                           (conv,)).fetchone()
    assert row is not None
    owner = str(row[0])
    a.append(TENANT, "patient-1", conv, share, {"role": "user", "content": "from a"})
    with pytest.raises(ValueError):  # b computed the same index before a committed
        b_store.append(TENANT, owner, conv, 2, b"turn from b", b"head from b")
    opened = a.open(TENANT, "patient-1", conv, share)
    assert [t["content"] for t in opened.turns][-1] == "from a" and len(opened.turns) == 3
    a_store.close()
    b_store.close()
