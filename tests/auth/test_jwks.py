"""Key providers: JWKS files, and HTTP fetching with caching, rotation and rate limiting."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medclave.auth.jwks import HttpJwks, StaticJwks, parse_jwks
from medclave.auth.pg_replay import PostgresReplayCache
from medclave.auth.replay import MemoryReplayCache, SqliteReplayCache
from medclave.errors import AuthError, InputError
from tests.auth._helpers import NOW, at, ec_key, ed_key, jwks_doc, kid

ISS = "https://idp.example"


class FakeIdp:
    """An httpx transport serving discovery and a JWKS that can rotate or go down."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.up = True
        self.hits: list[str] = []
        self.body: bytes | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hits.append(request.url.path)
        if not self.up:
            return httpx.Response(503)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": ISS, "jwks_uri": f"{ISS}/jwks.json"})
        if request.url.path == "/jwks.json":
            if self.body is not None:
                return httpx.Response(200, content=self.body)
            return httpx.Response(200, json=jwks_doc(*self.keys))
        return httpx.Response(404)

    def provider(self, **kw: object) -> HttpJwks:
        client = httpx.Client(transport=httpx.MockTransport(self))
        return HttpJwks(issuer=ISS, client=client, **kw)  # type: ignore[arg-type]


def code_of(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthError) as err:
        fn()
    return err.value.code


def test_discovery_then_cache_within_ttl() -> None:
    idp = FakeIdp(ed_key())
    p = idp.provider()
    assert p.key_for(kid(ed_key()), "EdDSA", now=NOW).kid == kid(ed_key())
    p.key_for(kid(ed_key()), "EdDSA", now=at(300))
    assert idp.hits == ["/.well-known/openid-configuration", "/jwks.json"]
    p.key_for(kid(ed_key()), "EdDSA", now=at(601))  # past the 10-minute TTL
    assert idp.hits.count("/jwks.json") == 2


def test_rotation_refetches_on_unknown_kid_rate_limited() -> None:
    idp = FakeIdp(ed_key())
    p = idp.provider()
    p.key_for(kid(ed_key()), "EdDSA", now=NOW)
    new = Ed25519PrivateKey.generate()
    idp.keys = [ed_key(), new]
    # Within the minimum refresh interval an unknown kid does not cause a fetch.
    assert code_of(lambda: p.key_for(kid(new), "EdDSA", now=at(5))) == "auth.key_unknown"
    assert idp.hits.count("/jwks.json") == 1
    # After it, one fetch finds the rotated key.
    assert p.key_for(kid(new), "EdDSA", now=at(31)).kid == kid(new)
    assert idp.hits.count("/jwks.json") == 2
    # A flood of made-up kids right after costs no more fetches.
    for i in range(20):
        assert code_of(lambda i=i: p.key_for(f"made-up-{i}", "EdDSA", now=at(32))) == "auth.key_unknown"
    assert idp.hits.count("/jwks.json") == 2


def test_stale_keys_bridge_a_short_outage_only() -> None:
    idp = FakeIdp(ed_key())
    p = idp.provider(max_stale=timedelta(minutes=30))
    p.key_for(kid(ed_key()), "EdDSA", now=NOW)
    idp.up = False
    assert p.key_for(kid(ed_key()), "EdDSA", now=at(900)).kid == kid(ed_key())
    assert code_of(lambda: p.key_for(kid(ed_key()), "EdDSA", now=at(600 + 1800 + 31))) == (
        "auth.jwks_unavailable"
    )


def test_unreachable_idp_without_cache() -> None:
    idp = FakeIdp(ed_key())
    idp.up = False
    p = idp.provider()
    assert code_of(lambda: p.key_for(None, "EdDSA", now=NOW)) == "auth.jwks_unavailable"
    # Retrying at once does not hammer the IdP.
    assert code_of(lambda: p.key_for(None, "EdDSA", now=at(1))) == "auth.jwks_unavailable"
    assert idp.hits.count("/.well-known/openid-configuration") == 1


def test_oversized_or_bogus_jwks() -> None:
    idp = FakeIdp(ed_key())
    idp.body = b'{"keys": [' + b'{"kty":"OKP"},' * 10000 + b"{}]}"
    assert code_of(lambda: idp.provider().key_for(None, "EdDSA", now=NOW)) == "auth.jwks_unavailable"
    idp.body = b"not json"
    assert code_of(lambda: idp.provider().key_for(None, "EdDSA", now=NOW)) == "auth.jwks_unavailable"


def test_discovery_must_name_the_same_issuer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"issuer": "https://evil.example", "jwks_uri": f"{ISS}/jwks.json"})

    p = HttpJwks(issuer=ISS, client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert code_of(lambda: p.key_for(None, "EdDSA", now=NOW)) == "auth.jwks_unavailable"


def test_plain_http_only_to_loopback() -> None:
    with pytest.raises(InputError):
        HttpJwks(jwks_uri="http://idp.example/jwks.json")
    with pytest.raises(InputError):
        HttpJwks(issuer="ftp://idp.example")
    HttpJwks(jwks_uri="http://127.0.0.1:9/jwks.json").close()
    HttpJwks(jwks_uri="http://localhost:9/jwks.json").close()
    with pytest.raises(InputError):
        HttpJwks()


def test_static_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_doc(ed_key(), ec_key())))
    keys = StaticJwks.from_file(path)
    assert keys.key_for(kid(ec_key()), "ES256", now=NOW).algorithm == "ES256"
    # The digest an enclave states is of the very bytes these keys came from.
    assert keys.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    with pytest.raises(InputError):
        StaticJwks.from_file(path)
    path.write_text("[]")
    with pytest.raises(InputError):
        StaticJwks.from_file(path)


def test_unusable_keys_are_skipped_not_fatal() -> None:
    doc = jwks_doc(ed_key())
    doc["keys"].append({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"})
    assert len(parse_jwks(doc)) == 1


def test_duplicate_kids_are_ambiguous() -> None:
    doc = jwks_doc(ed_key())
    other = jwks_doc(Ed25519PrivateKey.generate())["keys"][0]
    other["kid"] = doc["keys"][0]["kid"]
    doc["keys"].append(other)
    keys = StaticJwks.from_document(doc)
    assert code_of(lambda: keys.key_for(kid(ed_key()), "EdDSA", now=NOW)) == "auth.key_unknown"


# --- replay caches ---------------------------------------------------------------------------------


def test_memory_replay_cache_expiry_and_bound() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert cache.add("a", expires_at=at(10), now=NOW)
    assert not cache.add("a", expires_at=at(10), now=at(5))
    assert cache.add("a", expires_at=at(20), now=at(10))  # expired, so new again
    assert cache.add("b", expires_at=at(20), now=at(10))
    with pytest.raises(AuthError) as err:
        cache.add("c", expires_at=at(20), now=at(11))
    assert err.value.code == "auth.rate_limited"  # full: fails closed
    assert cache.add("c", expires_at=at(40), now=at(21))  # room again once the others expire
    assert len(cache) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_shared_replay_cache_is_shared_between_replicas(tmp_path: Path, backend: str,
                                                        request: pytest.FixtureRequest) -> None:
    one: SqliteReplayCache | PostgresReplayCache
    two: SqliteReplayCache | PostgresReplayCache
    if backend == "sqlite":
        db = tmp_path / "replay.db"
        one, two = SqliteReplayCache(db), SqliteReplayCache(db)
    else:  # two replicas, each its own pool, on one database (auth/pg_replay.py)
        url = request.getfixturevalue("pg_url")
        one, two = PostgresReplayCache(url, scope="t"), PostgresReplayCache(url, scope="t")
    try:
        assert one.add("jti-1", expires_at=at(60), now=NOW)
        assert not two.add("jti-1", expires_at=at(60), now=at(1))
        assert two.add("jti-1", expires_at=at(120), now=at(61))
        assert not one.add("jti-1", expires_at=at(120), now=at(62))
    finally:
        one.close()
        two.close()
