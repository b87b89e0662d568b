"""PostgreSQL-only properties of the audit log store: the schema discipline, the append-only
triggers, several logs in one database, read-only opening. (Everything shared with SQLite and
memory runs in test_log.py / test_tamper.py against all of them.)"""

from __future__ import annotations

import psycopg
import pytest

from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.pgstore import MIGRATIONS, PostgresLogStore
from medclave.audit.store import Batch
from medclave.audit.verify import verify_log
from medclave.errors import AuditError, ServiceError
from medclave.postgres.migrations import VERSION_TABLE
from tests.audit._builders import ORIGIN, make_entry


def _schema(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT table_name FROM information_schema.tables WHERE "
                            "table_schema = 'public' ORDER BY table_name").fetchall()


def test_a_newer_schema_is_refused_untouched(pg_url: str, log_signer: NoteSigner) -> None:
    log = AuditLog(PostgresLogStore(pg_url, log="a"), origin=ORIGIN, signer=log_signer)
    log.append(make_entry(0))
    log.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES ('audit', %s, 'later', 'from the "
                     "future')", (len(MIGRATIONS) + 1,))
        before = conn.execute("SELECT count(*) FROM audit_entries").fetchone()
    tables = _schema(pg_url)
    for readonly in (False, True):
        with pytest.raises(ServiceError) as err:
            PostgresLogStore(pg_url, log="a", readonly=readonly)
        assert err.value.code == "service.schema_newer"
    assert _schema(pg_url) == tables
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_entries").fetchone() == before


@pytest.mark.parametrize("statement", [
    "UPDATE audit_entries SET data = '\\x00'::bytea WHERE idx = 1",
    "DELETE FROM audit_entries WHERE idx = 2",
    "UPDATE audit_nodes SET hash = '\\x00'::bytea",
    "DELETE FROM audit_checkpoints",
    "TRUNCATE audit_entries",
    "TRUNCATE audit_checkpoints",
])
def test_rows_are_append_only(pg_url: str, log_signer: NoteSigner, statement: str) -> None:
    log = AuditLog(PostgresLogStore(pg_url, log="a"), origin=ORIGIN, signer=log_signer)
    log.append_batch([make_entry(i) for i in range(4)])
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)
    assert verify_log(log.store, log_signer.verifier).ok
    log.close()


def test_logs_in_one_database_are_separate(pg_url: str, log_signer: NoteSigner) -> None:
    other = NoteSigner.generate(ORIGIN)
    a = AuditLog(PostgresLogStore(pg_url, log="a"), origin=ORIGIN, signer=log_signer)
    b = AuditLog(PostgresLogStore(pg_url, log="b"), origin=ORIGIN, signer=other)
    a.append_batch([make_entry(i) for i in range(5)])
    b.append_batch([make_entry(i) for i in range(100, 103)])
    assert (a.size, b.size) == (5, 3)
    assert verify_log(a.store, log_signer.verifier).size == 5
    assert verify_log(b.store, other.verifier).size == 3
    with pytest.raises(AuditError):  # b's checkpoints are not a's key's
        verify_log(b.store, log_signer.verifier)
    a.close()
    b.close()


def test_readonly_refuses_an_empty_database_and_writes(pg_url: str,
                                                       log_signer: NoteSigner) -> None:
    with pytest.raises(AuditError) as err:
        PostgresLogStore(pg_url, log="a", readonly=True)
    assert err.value.code == "audit.entry_missing"
    assert _schema(pg_url) == []  # nothing was created
    AuditLog(PostgresLogStore(pg_url, log="a"), origin=ORIGIN, signer=log_signer).close()
    reader = PostgresLogStore(pg_url, log="a", readonly=True)
    with pytest.raises(AuditError) as err:
        reader.commit(Batch(0, (), ()))
    assert err.value.code == "audit.log_conflict"
    reader.close()


def test_streams_more_than_a_page(pg_url: str, log_signer: NoteSigner,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import medclave.audit.pgstore as pgstore

    monkeypatch.setattr(pgstore, "_PAGE", 7)
    log = AuditLog(PostgresLogStore(pg_url, log="a"), origin=ORIGIN, signer=log_signer)
    for start in range(0, 50, 5):
        log.append_batch([make_entry(i) for i in range(start, start + 5)])
    assert [i for i, _, _ in log.store.entries()] == list(range(50))
    assert [i for i, _, _ in log.store.entries(45)] == list(range(45, 50))
    assert [s for s, _ in log.store.checkpoints()] == list(range(5, 55, 5))
    assert [i for i, _ in log.store.level(1)] == list(range(25))
    report = verify_log(log.store, log_signer.verifier)
    assert report.ok and report.size == 50 and report.checkpoints == 10
    log.close()
