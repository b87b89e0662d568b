"""Resource names, key wrapping, owner tokens, rate limits and release policies."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.errors import AuthError, CryptoError, InputError, MedclaveError, PolicyError
from medclave.kbs.keywrap import AesGcmKek, EnvKek, FileKek, new_kek_b64
from medclave.kbs.models import parse_release_policy
from medclave.kbs.names import ResourceName
from medclave.kbs.ratelimit import Limiter, RateLimiter
from medclave.kbs.store import MemoryKbsStore
from medclave.kbs.tokens import authenticate, issue_owner_token, token_hash

T0 = datetime(2025, 7, 1, tzinfo=UTC)


# --- names -----------------------------------------------------------------------------------


def test_resource_names_round_trip() -> None:
    name = ResourceName.parse("kbs:///st-marys/data-key/notes_2025.v1")
    assert (name.owner, name.type, name.name) == ("st-marys", "data-key", "notes_2025.v1")
    assert str(name) == "kbs:///st-marys/data-key/notes_2025.v1"
    assert name.path == "st-marys/data-key/notes_2025.v1"


@pytest.mark.parametrize("text", [
    "", "kbs://a/b/c", "kbs:///a/b", "kbs:///a/b/c/d", "kbs:///A/b/c", "kbs:///a.b/c/d",
    "kbs:///a/../c", "kbs:///a/b/.c", "kbs:///a/b/c%2f", "kbs:///a/b/" + "x" * 129,
    "kbs:///-a/b/c", "https:///a/b/c", "kbs:///a/b/c\n",
])
def test_bad_resource_names(text: str) -> None:
    with pytest.raises(InputError) as e:
        ResourceName.parse(text)
    assert e.value.code == "input.malformed"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120) | st.text(max_size=60).map(lambda s: "kbs:///" + s))
def test_random_names_parse_or_refuse(text: str) -> None:
    try:
        name = ResourceName.parse(text)
    except MedclaveError as exc:
        assert exc.code == "input.malformed"
    else:
        assert str(name) == text


# --- key wrapping ----------------------------------------------------------------------------


def test_wrap_round_trip_and_aad_binding() -> None:
    kek = AesGcmKek(os.urandom(32))
    wrapped = kek.wrap(b"secret", b"kbs:///a/b/c#1")
    assert b"secret" not in wrapped
    assert kek.unwrap(wrapped, b"kbs:///a/b/c#1") == b"secret"
    with pytest.raises(CryptoError) as e:
        kek.unwrap(wrapped, b"kbs:///a/b/d#1")
    assert e.value.code == "crypto.decrypt_failed"


def test_wrapped_secret_with_one_bit_flipped_is_refused() -> None:
    kek = AesGcmKek(os.urandom(32))
    wrapped = bytearray(kek.wrap(b"secret", b"aad"))
    for offset in (len(wrapped) - 1, 24, 30):  # tag, nonce, ciphertext
        bad = bytearray(wrapped)
        bad[offset] ^= 1
        with pytest.raises(CryptoError):
            kek.unwrap(bytes(bad), b"aad")


def test_wrong_kek_is_named_as_such() -> None:
    wrapped = AesGcmKek(os.urandom(32)).wrap(b"secret", b"aad")
    with pytest.raises(InputError) as e:
        AesGcmKek(os.urandom(32)).unwrap(wrapped, b"aad")
    assert e.value.code == "config.invalid"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_unwrap_random_bytes_never_opens(data: bytes) -> None:
    kek = AesGcmKek(b"\x07" * 32)
    with pytest.raises(MedclaveError):
        kek.unwrap(data, b"aad")


def test_file_kek_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "kek.key"
    kek = FileKek.create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = FileKek.load(path)
    assert again.key_id == kek.key_id
    assert again.unwrap(kek.wrap(b"s", b"a"), b"a") == b"s"
    with pytest.raises(FileExistsError):
        FileKek.create(path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_kek_with_loose_permissions_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.key"
    FileKek.create(path)
    path.chmod(mode)
    with pytest.raises(InputError) as e:
        FileKek.load(path)
    assert e.value.code == "config.invalid" and "chmod 600" in e.value.detail


def test_file_kek_symlink_and_garbage_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    FileKek.create(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(InputError):
        FileKek.load(link)
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not base64!!")
    junk.chmod(0o600)
    with pytest.raises(InputError):
        FileKek.load(junk)
    short = tmp_path / "short.key"
    short.write_bytes(base64.b64encode(b"x" * 16))
    short.chmod(0o600)
    with pytest.raises(InputError):
        FileKek.load(short)


def test_env_kek(monkeypatch: pytest.MonkeyPatch) -> None:
    value = new_kek_b64()
    monkeypatch.setenv("MEDCLAVE_KBS_KEK", value)
    a = EnvKek.from_env()
    b = EnvKek.from_value(value)
    assert a.unwrap(b.wrap(b"s", b"x"), b"x") == b"s"
    monkeypatch.delenv("MEDCLAVE_KBS_KEK")
    with pytest.raises(InputError):
        EnvKek.from_env()
    with pytest.raises(InputError):
        EnvKek.from_value("c2hvcnQ=")


# --- owner tokens ----------------------------------------------------------------------------


def test_owner_tokens_authenticate_and_are_stored_hashed() -> None:
    store = MemoryKbsStore()
    token = issue_owner_token(store, "vendor", now=T0)
    assert token.startswith("mkt1.vendor.")
    assert authenticate(store, token) == "vendor"
    assert store.owner_token_hashes("vendor") == (token_hash(token),)
    assert token.encode() not in b"".join(store.owner_token_hashes("vendor"))


@pytest.mark.parametrize("bad,code", [
    (None, "auth.token_missing"), ("", "auth.token_missing"),
    ("garbage", "auth.invalid_credentials"), ("mkt1.vendor.wrong", "auth.invalid_credentials"),
    ("mkt1.other.x", "auth.invalid_credentials"), ("mkt2.vendor.x", "auth.invalid_credentials"),
    ("mkt1.Vendor.x", "auth.invalid_credentials"), ("mkt1.vendor." + "x" * 300,
                                                    "auth.invalid_credentials"),
])
def test_bad_tokens(bad: str | None, code: str) -> None:
    store = MemoryKbsStore()
    issue_owner_token(store, "vendor", now=T0)
    with pytest.raises(AuthError) as e:
        authenticate(store, bad)
    assert e.value.code == code


def test_token_of_one_owner_with_another_owners_name_fails() -> None:
    store = MemoryKbsStore()
    token = issue_owner_token(store, "vendor", now=T0)
    issue_owner_token(store, "hospital", now=T0)
    forged = token.replace("mkt1.vendor.", "mkt1.hospital.")
    with pytest.raises(AuthError):
        authenticate(store, forged)


# --- rate limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_token_bucket_refuses_past_burst_and_refills(backend: str,
                                                      request: pytest.FixtureRequest) -> None:
    t = [0.0]
    limiter: Limiter = RateLimiter(2.0, 3, clock=lambda: t[0])
    if backend == "postgres":  # the buckets every broker replica shares (kbs/pg_ratelimit.py)
        from medclave.kbs.pg_ratelimit import PostgresRateLimiter
        from medclave.postgres import open_pool

        pool = open_pool(request.getfixturevalue("pg_url"), max_size=2)
        request.addfinalizer(pool.close)
        limiter = PostgresRateLimiter(pool, 2.0, 3, clock=lambda: t[0])
    for _ in range(3):
        limiter.check("ip:a")
    with pytest.raises(AuthError) as e:
        limiter.check("ip:a")
    assert e.value.code == "auth.rate_limited" and e.value.status == 429
    limiter.check("ip:b")  # per client
    t[0] = 0.5  # one token back
    limiter.check("ip:a")
    with pytest.raises(AuthError):
        limiter.check("ip:a")


def test_rate_limiter_table_is_bounded() -> None:
    limiter = RateLimiter(1.0, 1, clock=lambda: 0.0, max_clients=10)
    for i in range(100):
        limiter.check(f"ip:{i}")
    assert len(limiter._buckets) == 10


# --- release policies ------------------------------------------------------------------------

POLICY = """
model_digests = ["AB" ]
[appraisal]
platforms = ["sim"]
"""


def test_release_policy_from_toml_and_json() -> None:
    digest = "ab" * 32
    p = parse_release_policy(POLICY.replace('"AB"', f'"{digest.upper()}"').encode())
    assert p.model_digests == (digest,) and p.appraisal.allows_sim
    again = parse_release_policy(p.to_json().encode())
    assert again == p and again.digest() == p.digest()


@pytest.mark.parametrize("doc,code", [
    (b"{}", "policy.empty"), (b'{"appraisal": {"platforms": []}}', "policy.empty"),
    (POLICY.encode(), "policy.invalid"),  # "AB" is not a SHA-256
    (b'{"appraisal": {"platforms": ["sim"]}, "extra": 1}', "policy.invalid"),
    (b'{"appraisal": {"platforms": ["pdp11"]}}', "policy.invalid"),
    (b"a = [", "policy.invalid"), (b"\xff\xfe", "policy.invalid"), (b"x" * 300_000, "policy.invalid"),
    (b'{"appraisal": {"platforms": ["sim"]}, "requesters": [""]}', "policy.invalid"),
])
def test_bad_release_policies(doc: bytes, code: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_release_policy(doc)
    assert e.value.code == code


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_policy_bytes_parse_or_refuse(data: bytes) -> None:
    try:
        parse_release_policy(data)
    except MedclaveError as exc:
        assert exc.code.startswith("policy.")
