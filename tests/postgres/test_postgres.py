"""The shared PostgreSQL pieces: local-only URLs, pools, and versioned migrations."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from medclave.errors import InputError, ServiceError
from medclave.postgres import is_postgres_url, open_pool, redacted
from medclave.postgres import migrations as pgm
from medclave.postgres.pool import check_local

V1 = pgm.Migration(1, "things", pgm.script("CREATE TABLE thing (id INTEGER PRIMARY KEY);\n"
                                         "CREATE INDEX thing_id ON thing (id);\n"))
V2 = pgm.Migration(2, "thing names", pgm.script("ALTER TABLE thing ADD COLUMN name TEXT;\n"))


def tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize("url", ["postgresql://u@/db?host=/run/pg", "postgresql://u:p@127.0.0.1/db",
                                 "postgres://localhost:5433/db", "postgresql:///db",
                                 "postgresql://u@[::1]/db"])
def test_local_urls_are_accepted(url: str) -> None:
    assert is_postgres_url(url)
    check_local(url)


@pytest.mark.parametrize("url", ["postgresql://u@db.example.org/db",
                                 "postgresql://u@10.0.0.5/db",
                                 "postgresql://u@/db?host=/run/pg,db.example.org",
                                 "postgresql:///db?hostaddr=192.0.2.1"])
def test_remote_urls_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InputError) as err:
        open_pool(url)
    assert err.value.code == "config.invalid"


def test_sqlite_paths_are_not_postgres() -> None:
    assert not is_postgres_url("state/broker.db")
    assert not is_postgres_url("/var/lib/medclave")


def test_password_is_redacted() -> None:
    shown = redacted("postgresql://medclave:s3cret@127.0.0.1:5432/medclave")
    assert "s3cret" not in shown and "127.0.0.1:5432/medclave" in shown


def test_unreachable_database_is_a_start_failure(tmp_path: Any) -> None:
    with pytest.raises(ServiceError) as err:
        open_pool(f"postgresql://nobody@/x?host={tmp_path}", timeout=1.0)
    assert err.value.code == "service.start_failed"


def test_pool_opens_in_autocommit(pg_url: str) -> None:
    pool = open_pool(pg_url, max_size=2)
    try:
        with pool.connection() as conn:
            assert conn.autocommit
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_migrate_fresh_then_forward_and_idempotent(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert pgm.migrate(conn, store="demo", migrations=[V1]) == 1
        assert pgm.current_version(conn, "demo") == 1
        assert pgm.migrate(conn, store="demo", migrations=[V1, V2]) == 2
        assert pgm.migrate(conn, store="demo", migrations=[V1, V2]) == 2
        conn.execute("INSERT INTO thing VALUES (1, 'a')")
        rows = conn.execute("SELECT store, version FROM medclave_schema ORDER BY version").fetchall()
        assert rows == [("demo", 1), ("demo", 2)]
        # Another store's versions are its own.
        assert pgm.current_version(conn, "other") == 0


def test_newer_schema_refused_untouched(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        pgm.migrate(conn, store="demo", migrations=[V1, V2])
        before = tables(conn)
        with pytest.raises(ServiceError) as err:
            pgm.migrate(conn, store="demo", migrations=[V1])
        assert err.value.code == "service.schema_newer"
        assert tables(conn) == before
        assert pgm.current_version(conn, "demo") == 2


def test_failed_migration_rolls_back_whole(pg_url: str) -> None:
    broken = pgm.Migration(2, "broken", pgm.script("ALTER TABLE thing ADD COLUMN name TEXT;\n"
                                                   "ALTER TABLE nowhere ADD COLUMN x INT;\n"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        pgm.migrate(conn, store="demo", migrations=[V1])
        with pytest.raises(psycopg.errors.UndefinedTable):
            pgm.migrate(conn, store="demo", migrations=[V1, broken])
        assert pgm.current_version(conn, "demo") == 1
        cols = conn.execute("SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'thing'").fetchall()
        assert cols == [("id",)]


def test_two_replicas_migrating_together_apply_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                start.wait()
                pgm.migrate(conn, store="demo", migrations=[V1, V2])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM medclave_schema").fetchone() == (2,)


def test_migrations_must_be_numbered_in_order() -> None:
    with pytest.raises(ValueError, match="numbered"):
        pgm.newest([V2])
