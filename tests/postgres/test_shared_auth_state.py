"""Replay and rate-limit state shared by replicas through PostgreSQL (issue 17).

The attack: with each replica keeping its own memory, a DPoP proof replayed to another replica
behind the balancer is accepted once per replica, and a client gets the rate limit once per
replica. Here two "replicas" are two separately opened caches or limiters (each its own pool)
on one database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from medclave.auth.authn import Authenticator
from medclave.auth.dpop import create_dpop_proof
from medclave.auth.idp_server import IdpSettings
from medclave.auth.pg_replay import PostgresReplayCache
from medclave.auth.replay import LayeredReplayCache, MemoryReplayCache, open_replay_cache
from medclave.auth.tokens import IssuerConfig, TokenOptions
from medclave.client.proxy import ProxySettings
from medclave.crypto.jose import jwk_thumbprint
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import AuthError, InputError, KbsError
from medclave.kbs.factory import open_limiter, open_store
from medclave.kbs.pg_ratelimit import PostgresRateLimiter
from medclave.kbs.postgres_store import PostgresKbsStore
from medclave.kbs.ratelimit import RateLimiter
from medclave.kbs.settings import KbsSettings
from medclave.postgres import open_pool
from tests.auth._helpers import AUDIENCE, ISSUER, at, ec_key, ed_key, jwks, mint

NOW = datetime(2026, 1, 5, 9, tzinfo=UTC)


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[PostgresReplayCache, PostgresReplayCache]]:
    a = PostgresReplayCache(pg_url, scope="enclave")
    b = PostgresReplayCache(pg_url, scope="enclave")
    yield a, b
    a.close()
    b.close()


def test_a_key_is_accepted_once_across_replicas(
        replicas: tuple[PostgresReplayCache, PostgresReplayCache]) -> None:
    a, b = replicas
    exp = NOW + timedelta(minutes=5)
    assert a.add("dpop\x00thumb\x00jti-1", expires_at=exp, now=NOW) is True
    assert b.add("dpop\x00thumb\x00jti-1", expires_at=exp, now=NOW) is False
    assert a.add("dpop\x00thumb\x00jti-1", expires_at=exp, now=NOW) is False
    assert b.add("dpop\x00thumb\x00jti-2", expires_at=exp, now=NOW) is True


def test_an_expired_key_is_new_again_and_purged(pg_url: str) -> None:
    cache = PostgresReplayCache(pg_url, scope="enclave", purge_seconds=0)
    try:
        cache.add("k", expires_at=NOW + timedelta(seconds=10), now=NOW)
        cache.add("old", expires_at=NOW + timedelta(seconds=1), now=NOW)
        assert len(cache) == 2
        later = NOW + timedelta(seconds=10)
        assert cache.add("k", expires_at=later + timedelta(seconds=10), now=later) is True
        assert len(cache) == 1  # "old" purged, "k" taken over
        assert cache.add("k", expires_at=later, now=later) is False
    finally:
        cache.close()


def test_scopes_do_not_see_each_others_keys(pg_url: str) -> None:
    admission = PostgresReplayCache(pg_url, scope="proxy-admission")
    apps = PostgresReplayCache(pg_url, scope="proxy-apps")
    try:
        exp = NOW + timedelta(minutes=1)
        assert admission.add("same", expires_at=exp, now=NOW)
        assert apps.add("same", expires_at=exp, now=NOW)
    finally:
        admission.close()
        apps.close()


def _add_at_once(caches: list[PostgresReplayCache], key: str) -> list[bool]:
    start = threading.Barrier(len(caches))
    results: list[bool] = []
    lock = threading.Lock()

    def add(cache: PostgresReplayCache) -> None:
        start.wait()
        new = cache.add(key, expires_at=NOW + timedelta(minutes=1), now=NOW)
        with lock:
            results.append(new)

    threads = [threading.Thread(target=add, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_adds_of_one_key_accept_exactly_one(
        replicas: tuple[PostgresReplayCache, PostgresReplayCache]) -> None:
    for round_ in range(5):
        results = _add_at_once(list(replicas) * 4, f"jti-{round_}")
        assert sorted(results) == [False] * 7 + [True]


def test_an_unreachable_database_refuses_fail_closed(pg_url: str) -> None:
    cache = PostgresReplayCache(pg_url, scope="enclave")
    cache.pool.close()
    with pytest.raises(AuthError) as err:
        cache.add("k", expires_at=NOW + timedelta(minutes=1), now=NOW)
    assert err.value.code == "auth.state_unavailable"


def test_layered_cache_refuses_what_this_replica_saw_even_if_the_database_forgets(
        pg_url: str) -> None:
    cache = open_replay_cache(pg_url, scope="enclave")
    try:
        assert isinstance(cache, LayeredReplayCache)
        exp = NOW + timedelta(minutes=1)
        assert cache.add("k", expires_at=exp, now=NOW)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DELETE FROM auth_replay")  # whoever runs the database rolls it back
        assert cache.add("k", expires_at=exp, now=NOW) is False
    finally:
        cache.close()  # type: ignore[attr-defined]
    assert isinstance(open_replay_cache(None, scope="enclave"), MemoryReplayCache)


# --- a DPoP proof replayed to another replica, through the real Authenticator ------------------


def _authenticator(pg_url: str) -> Authenticator:
    config = IssuerConfig(issuer=ISSUER, keys=jwks(ed_key()))
    return Authenticator([config], TokenOptions(audiences=frozenset({AUDIENCE})),
                         clock=lambda: at(0), replay=open_replay_cache(pg_url, scope="enclave"))


def test_a_dpop_proof_replayed_to_a_second_replica_is_refused(pg_url: str) -> None:
    client_key = ec_key()
    token = mint(ed_key(), cnf={"jkt": jwk_thumbprint(client_key.public_key())})
    url = "https://enclave.example/v1/chat/completions"
    proof = create_dpop_proof(client_key, method="POST", url=url, now=at(0), access_token=token)
    first, second = _authenticator(pg_url), _authenticator(pg_url)
    try:
        who = first.authenticate(token, method="POST", url=url, dpop=proof, scheme="DPoP")
        assert who.subject == "dr-alice"
        with pytest.raises(AuthError) as err:
            second.authenticate(token, method="POST", url=url, dpop=proof, scheme="DPoP")
        assert err.value.code == "auth.dpop_invalid"
        assert "replay" in err.value.detail
        # A fresh proof from the same client is fine on either replica.
        fresh = create_dpop_proof(client_key, method="POST", url=url, now=at(0),
                                  access_token=token)
        assert second.authenticate(token, method="POST", url=url, dpop=fresh,
                                   scheme="DPoP").subject == "dr-alice"
    finally:
        for auth in (first, second):
            auth._replay.close()  # type: ignore[attr-defined]


def test_enclave_replicas_configured_with_one_store_refuse_a_replayed_proof(
        pg_url: str, tmp_path: Path) -> None:
    """`build_authorization` from EnclaveSettings(store=...): the enclave's own wiring."""
    import json

    from medclave.enclave.attester import HostPlatform
    from medclave.enclave.boot import build_authorization
    from medclave.protocol.inference import INNER_AUTHORITY, MODELS_PATH, InnerRequest
    from tests.auth._helpers import jwks_doc

    (tmp_path / "jwks.json").write_text(json.dumps(jwks_doc(ed_key())))
    settings = EnclaveSettings(store=pg_url, auth_issuer=ISSUER, auth_audience=AUDIENCE,
                               auth_jwks_file=tmp_path / "jwks.json")
    platform = HostPlatform("sim", attester=None, secure=False)  # type: ignore[arg-type]
    hooks = [build_authorization(settings, platform, lambda: at(0)) for _ in range(2)]
    client_key = ec_key()
    token = mint(ed_key(), cnf={"jkt": jwk_thumbprint(client_key.public_key())})
    proof = create_dpop_proof(client_key, method="GET", url=f"https://{INNER_AUTHORITY}"
                              f"{MODELS_PATH}", now=at(0), access_token=token)
    request = InnerRequest("GET", MODELS_PATH, (("authorization", f"DPoP {token}"),
                                                ("dpop", proof)), b"")
    try:
        assert hooks[0].authorize(request).subject == "dr-alice"
        with pytest.raises(AuthError) as err:
            hooks[1].authorize(request)
        assert err.value.code == "auth.dpop_invalid" and "replay" in err.value.detail
    finally:
        for hook in hooks:
            hook._authn._replay.close()  # type: ignore[attr-defined]


def test_a_token_request_proof_replayed_to_a_second_idp_replica_is_refused(
        pg_url: str, tmp_path: Path) -> None:
    from medclave.auth.idp_server import build_service
    from medclave.auth.issuer import Directory

    Directory(tmp_path).add_client("gw", "s3cret-s3cret", tenant="st-mary", roles=["service"])
    replicas = [build_service(tmp_path, issuer="https://idp.example",
                              replay=open_replay_cache(pg_url, scope="idp")) for _ in range(2)]
    now = datetime.now(UTC)
    proof = create_dpop_proof(ec_key(), method="POST", url="https://idp.example/token", now=now)
    form = {"grant_type": "client_credentials", "client_id": "gw",
            "client_secret": "s3cret-s3cret"}
    try:
        answer = replicas[0].token(form, basic=None, dpop=proof, now=now)
        assert answer["token_type"] == "DPoP"
        with pytest.raises(AuthError) as err:
            replicas[1].token(form, basic=None, dpop=proof, now=now)
        assert err.value.code == "auth.dpop_invalid" and "replay" in err.value.detail
    finally:
        for service in replicas:
            service._replay.close()  # type: ignore[attr-defined]


def test_failed_logins_count_across_idp_replicas(pg_url: str, tmp_path: Path) -> None:
    """Five wrong secrets spread over two replicas block the name on both (not 5 each)."""
    from medclave.auth.idp_server import build_service
    from medclave.auth.issuer import Directory
    from medclave.auth.replay import open_failure_log

    Directory(tmp_path).add_client("gw", "s3cret-s3cret", tenant="st-mary", roles=["service"])
    replicas = [build_service(tmp_path, issuer="https://idp.example",
                              failures=open_failure_log(pg_url)) for _ in range(2)]
    now = datetime.now(UTC)
    wrong = {"grant_type": "client_credentials", "client_id": "gw", "client_secret": "nope"}
    try:
        for i in range(5):
            with pytest.raises(AuthError) as err:
                replicas[i % 2].token(wrong, basic=None, dpop=None, now=now)
            assert err.value.code == "auth.invalid_credentials"
        right = {**wrong, "client_secret": "s3cret-s3cret"}
        for service in replicas:
            with pytest.raises(AuthError) as err:
                service.token(right, basic=None, dpop=None, now=now)
            assert err.value.code == "auth.rate_limited"
        # A minute later the window has passed, on both.
        later = now + timedelta(minutes=1, seconds=1)
        assert replicas[1].token(right, basic=None, dpop=None, now=later)["access_token"]
    finally:
        for service in replicas:
            service._failures.close()  # type: ignore[attr-defined]


# --- the broker's rate limit ---------------------------------------------------------------------


def test_two_replicas_share_one_bucket_under_concurrency(pg_url: str) -> None:
    pools = [open_pool(pg_url, max_size=4), open_pool(pg_url, max_size=4)]
    try:
        # A rate so low that nothing refills during the test: exactly `burst` requests pass.
        limiters = [PostgresRateLimiter(p, rate=0.0001, burst=20) for p in pools]
        passed: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(8)

        def hammer(limiter: PostgresRateLimiter) -> None:
            start.wait()
            ok = 0
            for _ in range(10):
                try:
                    limiter.check("ip:192.0.2.7")
                    ok += 1
                except AuthError as exc:
                    assert exc.code == "auth.rate_limited"
            with lock:
                passed.append(ok)

        threads = [threading.Thread(target=hammer, args=(limiters[i % 2],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(passed) == 20  # of 80 attempts, across both replicas
        limiters[0].check("ip:192.0.2.8")  # another client has its own bucket
    finally:
        for p in pools:
            p.close()


def test_refill_follows_the_clock_like_the_memory_limiter(pg_url: str) -> None:
    now = [1000.0]
    pool = open_pool(pg_url, max_size=2)
    try:
        shared = PostgresRateLimiter(pool, rate=2.0, burst=3, clock=lambda: now[0])
        local = RateLimiter(2.0, 3, clock=lambda: now[0])
        for step in (0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 5.0, 0.0, 0.0, 0.0, 0.0):
            now[0] += step
            outcomes = []
            for limiter in (shared, local):
                try:
                    limiter.check("c")
                    outcomes.append("ok")
                except AuthError:
                    outcomes.append("limited")
            assert outcomes[0] == outcomes[1], (step, outcomes)
    finally:
        pool.close()


def test_refill_by_hand_computed_counts(pg_url: str) -> None:
    now = [50.0]
    pool = open_pool(pg_url, max_size=2)
    try:
        limiter = PostgresRateLimiter(pool, rate=1.0, burst=2, clock=lambda: now[0])
        outcomes = []
        for step in (0, 0, 0, 1.0, 0, 10.0, 0, 0):
            now[0] += step
            try:
                limiter.check("c")
                outcomes.append(1)
            except AuthError:
                outcomes.append(0)
        # burst 2: ok ok no; +1 s: one token: ok no; +10 s: full (2): ok ok no
        assert outcomes == [1, 1, 0, 1, 0, 1, 1, 0]
    finally:
        pool.close()


def test_a_limiter_without_its_database_refuses(pg_url: str) -> None:
    pool = open_pool(pg_url, max_size=2)
    limiter = PostgresRateLimiter(pool, rate=1.0, burst=2)
    pool.close()
    with pytest.raises(KbsError) as err:
        limiter.check("c")
    assert err.value.code == "kbs.unavailable"


# --- one setting chooses ---------------------------------------------------------------------


def test_the_broker_store_setting_chooses_both_store_and_limiter(pg_url: str, tmp_path: Path
                                                                 ) -> None:
    settings = KbsSettings(data_dir=tmp_path / "kbs", store=pg_url)
    store = open_store(settings)
    try:
        assert isinstance(store, PostgresKbsStore)
        assert isinstance(open_limiter(settings, store), PostgresRateLimiter)
        assert not (tmp_path / "kbs").exists()  # nothing written on this machine
    finally:
        store.close()
    sqlite = KbsSettings(data_dir=tmp_path / "kbs")
    assert isinstance(open_limiter(sqlite, open_store(sqlite)), RateLimiter)


@pytest.mark.parametrize("value", ["mysql://u@127.0.0.1/db", "postgresq://x", "sqlite3", ""])
def test_invalid_store_values_are_refused_at_start(value: str) -> None:
    for model in (KbsSettings, EnclaveSettings, IdpSettings):
        with pytest.raises(ValidationError, match="postgresql:// URL"):
            model(store=value)
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        ProxySettings(upstream="http://127.0.0.1:1", policy_file=Path("p.toml"), store=value)


def test_a_remote_database_is_refused_at_start(tmp_path: Path) -> None:
    settings = KbsSettings(data_dir=tmp_path, store="postgresql://medclave:pw@db.example.org/kbs")
    with pytest.raises(InputError) as err:
        open_store(settings)
    assert err.value.code == "config.invalid"
    assert "pw" not in str(err.value.detail)
    with pytest.raises(InputError) as err:
        open_replay_cache("postgresql://u@203.0.113.9/x", scope="idp")
    assert err.value.code == "config.invalid"


def test_config_show_never_prints_the_store_password() -> None:
    from medclave.ops.config import effective

    shown = effective(KbsSettings(store="postgresql://medclave:s3cret@127.0.0.1:5432/kbs"))
    assert shown["store"] == "postgresql://medclave:***@127.0.0.1:5432/kbs"
    assert effective(KbsSettings())["store"] == "sqlite"
