"""The broker's store on PostgreSQL beyond the shared contract (tests/kbs run that on every
backend): its migrations, and what only several writers can break (two replicas, two pools)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from medclave.errors import CryptoError, InputError, KbsError, MedclaveError
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import FileKek
from medclave.kbs.names import ResourceName
from medclave.kbs.postgres_store import PostgresKbsStore
from medclave.kbs.rekey import rotate_configured_kek
from medclave.kbs.service import KeyBroker, wrap_aad
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import BrokerSigner
from medclave.kbs.store import Decision, NonceState

T0 = datetime(2025, 7, 1, 12, tzinfo=UTC)
R = ResourceName.parse("kbs:///vendor/model-key/llama")
KBS_TABLES = {"kbs_owner_tokens", "kbs_resources", "kbs_secret_versions", "kbs_policies",
              "kbs_policy_versions", "kbs_nonces", "kbs_decisions", "kbs_revocations",
              "kbs_meta"}
T = TypeVar("T")


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows.fetchall()}


def snapshot(url: str) -> list[tuple[Any, ...]]:
    """Every table with its row count and its columns: what "untouched" compares."""
    with psycopg.connect(url) as conn:
        out: list[tuple[Any, ...]] = []
        for name in sorted(tables(url)):
            count = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
            cols = conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                                "table_name = %s ORDER BY column_name", (name,)).fetchall()
            out.append((name, count, tuple(c[0] for c in cols)))
        return out


@pytest.fixture
def two(pg_url: str) -> Iterator[tuple[PostgresKbsStore, PostgresKbsStore]]:
    """Two broker replicas: two stores, each with its own pool, on one database."""
    a, b = PostgresKbsStore(pg_url), PostgresKbsStore(pg_url)
    yield a, b
    a.close()
    b.close()


def race(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run ``calls`` at once (one thread each, released together); results or errors."""
    start = threading.Barrier(len(calls))
    out: list[T | BaseException] = [RuntimeError("not run")] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = calls[i]()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_an_empty_database_is_migrated_and_reopened(pg_url: str) -> None:
    assert tables(pg_url) == set()
    store = PostgresKbsStore(pg_url)
    store.create_secret(R, b"w1", T0)
    store.close()
    assert tables(pg_url) == KBS_TABLES | {"medclave_schema"}
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute("SELECT store, version FROM medclave_schema").fetchall()
    assert versions == [("broker", 1)]
    again = PostgresKbsStore(pg_url)  # idempotent: nothing re-applied, data kept
    try:
        assert again.secret_version(R).wrapped == b"w1"
    finally:
        again.close()


def test_a_newer_schema_is_refused_untouched(pg_url: str) -> None:
    PostgresKbsStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO medclave_schema VALUES ('broker', 2, '2030-01-01', 'newer')")
    before = snapshot(pg_url)
    with pytest.raises(MedclaveError) as err:
        PostgresKbsStore(pg_url)
    assert err.value.code == "service.schema_newer"
    assert snapshot(pg_url) == before


def _open_each(name: str, url: str) -> Callable[[], Any]:
    from medclave.auth.pg_replay import PostgresFailureLog, PostgresReplayCache
    from medclave.client.pg_apikeys import PostgresApiKeyStore
    from medclave.kbs.pg_ratelimit import PostgresRateLimiter
    from medclave.postgres import open_pool

    def limiter() -> Any:
        pool = open_pool(url, max_size=1)
        try:
            return PostgresRateLimiter(pool, 1.0, 1)
        finally:
            pool.close()

    return {"broker": lambda: PostgresKbsStore(url),
            "replay cache": lambda: PostgresReplayCache(url, scope="t"),
            "rate limit": limiter,
            "api keys": lambda: PostgresApiKeyStore(url),
            "idp failures": lambda: PostgresFailureLog(url)}[name]


@pytest.mark.parametrize("name", ["broker", "replay cache", "rate limit", "api keys",
                                  "idp failures"])
def test_every_postgres_store_migrates_an_empty_database_and_refuses_a_newer_one(
        pg_url: str, name: str) -> None:
    opened = _open_each(name, pg_url)()
    close = getattr(opened, "close", None)
    if close is not None:
        close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT store, version FROM medclave_schema").fetchall() == [(name, 1)]
        conn.execute("INSERT INTO medclave_schema VALUES (%s, 2, '2030-01-01', 'newer')", (name,))
    before = snapshot(pg_url)
    with pytest.raises(MedclaveError) as err:
        _open_each(name, pg_url)()
    assert err.value.code == "service.schema_newer"
    assert snapshot(pg_url) == before


def test_permanent_decisions_cannot_be_changed_in_the_database(pg_url: str) -> None:
    """Append-only in the database itself: a trigger refuses UPDATE and DELETE of permanent
    rows; aggregated rows still count up and the oldest still go (retention)."""
    store = PostgresKbsStore(pg_url, max_aggregated=1)
    try:
        store.record_decision(Decision(at=T0, action="release", resource=str(R),
                                       outcome="allowed", client="ip:1", checks=("sig:ok",)))
        for i in range(2):
            store.record_decision(Decision(at=T0, action="release", resource=f"{R}{i}",
                                           outcome="refused", client="ip:1",
                                           code="kbs.nonce_unknown"))
        assert [d.resource for d in store.decisions()] == [f"{R}1", str(R)]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for sql in ("UPDATE kbs_decisions SET outcome = 'refused' WHERE bucket IS NULL",
                        "DELETE FROM kbs_decisions WHERE bucket IS NULL"):
                with pytest.raises(psycopg.errors.RaiseException, match="never changed"):
                    conn.execute(sql)
        assert [d.outcome for d in store.decisions()] == ["refused", "allowed"]
    finally:
        store.close()


def test_two_replicas_rotating_at_once_one_wins(two: tuple[PostgresKbsStore, PostgresKbsStore]
                                                ) -> None:
    a, b = two
    a.create_secret(R, b"w1", T0)
    results = race([lambda: a.rotate_secret(R, b"from-a", T0, 1),
                    lambda: b.rotate_secret(R, b"from-b", T0, 1)])
    wins = [r for r in results if r == 2]
    losses = [r for r in results if isinstance(r, KbsError) and r.code == "kbs.conflict"]
    assert len(wins) == 1 and len(losses) == 1, results
    info = b.resource_info(R)
    assert info is not None and info.current == 2 and info.versions == (1, 2)
    assert a.secret_version(R).wrapped in (b"from-a", b"from-b")


def test_two_replicas_creating_at_once_one_wins(two: tuple[PostgresKbsStore, PostgresKbsStore]
                                                ) -> None:
    a, b = two
    results = race([lambda: a.create_secret(R, b"a", T0), lambda: b.create_secret(R, b"b", T0)])
    assert sorted(type(r).__name__ for r in results) == ["KbsError", "int"], results
    assert a.resource_info(R) is not None


def test_first_policies_at_once_get_versions_1_and_2(
        two: tuple[PostgresKbsStore, PostgresKbsStore]) -> None:
    a, b = two
    results = race([lambda: a.put_policy(R, "{}", "da", T0), lambda: b.put_policy(R, "{}", "db", T0)])
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2], results
    assert a.policy_versions(R) == (1, 2)


def test_a_nonce_spent_at_two_replicas_at_once_is_fresh_once(
        two: tuple[PostgresKbsStore, PostgresKbsStore]) -> None:
    a, b = two
    for i in range(5):
        nonce = bytes([i]) * 32
        a.add_nonce(nonce, T0 + timedelta(seconds=60), T0)
        spends = race([lambda n=nonce: a.spend_nonce(n, T0),  # type: ignore[misc]
                       lambda n=nonce: b.spend_nonce(n, T0)] * 2)
        assert sorted(s.value for s in spends if isinstance(s, NonceState)) == [
            "fresh", "used", "used", "used"], spends


def test_refusals_counted_from_two_replicas_add_up(
        two: tuple[PostgresKbsStore, PostgresKbsStore]) -> None:
    a, b = two
    refusal = Decision(at=T0, action="release", resource=str(R), outcome="refused",
                       client="ip:192.0.2.1", code="kbs.nonce_unknown")

    def many(store: PostgresKbsStore) -> None:
        for _ in range(25):
            store.record_decision(refusal)

    race([lambda: many(a), lambda: many(b), lambda: many(a), lambda: many(b)])
    rows = a.decisions()
    assert [(d.code, d.count) for d in rows] == [("kbs.nonce_unknown", 100)]


def test_an_unreachable_database_is_kbs_unavailable(pg_url: str) -> None:
    store = PostgresKbsStore(pg_url)
    store.pool.close()
    with pytest.raises(KbsError) as err:
        store.secret_version(R)
    assert err.value.code == "kbs.unavailable"
    with pytest.raises(KbsError) as err:
        store.create_secret(R, b"w", T0)
    assert err.value.code == "kbs.unavailable"
    store.close()


# --- KEK rotation on PostgreSQL (kbs/rekey.py) ----------------------------------------------------


def test_a_kek_rotation_waits_for_every_broker_replica_to_stop(pg_url: str, tmp_path: Path
                                                               ) -> None:
    """Exclusive against every open store (all replicas), and no store opens during one."""
    settings = KbsSettings(data_dir=tmp_path / "kbs", store=pg_url)
    settings.data_dir.mkdir(mode=0o700)
    kek = FileKek.create(settings.kek_path)
    broker = KeyBroker(PostgresKbsStore(pg_url), kek, signer=BrokerSigner.generate())
    broker.create_resource("vendor", str(R), b"s" * 32, client_id="setup")
    broker.rotate_resource("vendor", str(R), b"t" * 32, client_id="setup")
    with pytest.raises(KbsError) as err:  # a replica is running
        rotate_configured_kek(settings, new_kek_file=None, now=T0)
    assert err.value.code == "kbs.unavailable"
    assert not (settings.data_dir / "kek.key.new").exists()
    broker.store.close()

    rotating = PostgresKbsStore(pg_url, exclusive=True)
    with pytest.raises(KbsError) as err:  # a replica starting meanwhile
        PostgresKbsStore(pg_url)
    assert err.value.code == "kbs.unavailable"
    rotating.close()

    out = rotate_configured_kek(settings, new_kek_file=None, now=T0)
    assert out["secret_versions"] == 2 and out["old_kek_id"] == kek.key_id
    new = FileKek.load(settings.kek_path)
    assert new.key_id == out["new_kek_id"] != kek.key_id
    restarted = build_broker(settings, signer=BrokerSigner.generate())
    try:
        assert restarted.store.kek_id() == new.key_id
        for version, value in ((1, b"s" * 32), (2, b"t" * 32)):
            wrapped = restarted.store.secret_version(R, version).wrapped
            assert new.unwrap(wrapped, wrap_aad(R, version)) == value
        logged = [d for d in restarted.store.decisions() if d.action == "kek_rotate"]
        assert len(logged) == 1 and "2 secret versions" in logged[0].detail
    finally:
        restarted.store.close()
    with pytest.raises(InputError) as refused:  # the pre-rotation KEK is refused at start
        build_broker(settings, wrapper=kek, signer=BrokerSigner.generate())
    assert refused.value.code == "config.invalid"


def test_a_rewrap_that_fails_midway_changes_nothing(pg_url: str) -> None:
    store = PostgresKbsStore(pg_url)
    try:
        store.create_secret(R, b"w1", T0)
        store.rotate_secret(R, b"w2", T0, 1)
        before = snapshot(pg_url)

        def rewrap(name: str, version: int, wrapped: bytes) -> bytes:
            if version == 2:
                raise CryptoError("crypto.decrypt_failed", "a tampered row")
            return b"new" + wrapped

        refusal = Decision(at=T0, action="kek_rotate", resource="kbs:///_/kek/broker",
                           outcome="allowed", client="cli")
        with pytest.raises(CryptoError):
            store.rewrap_secrets(rewrap, kek_id="k2", decision=refusal)
        assert snapshot(pg_url) == before
        assert store.kek_id() is None and store.secret_version(R, 1).wrapped == b"w1"
    finally:
        store.close()
