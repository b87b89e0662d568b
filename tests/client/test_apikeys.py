"""Local API keys: shown once, stored only as a hash in an owner-only file, revocable at once."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclave.cli.main import app
from medclave.client.apikeys import FILE, ApiKeys, ApiKeyStore, looks_like_api_key, open_api_keys
from medclave.errors import InputError

runner = CliRunner()
KeysFactory = Callable[[], ApiKeys]


@pytest.fixture(params=["sqlite", "postgres"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeysFactory]:
    """Opens the proxy's key store on one backend; every opening shares the same keys, as the
    running proxy and the CLI (or the proxy's replicas) do."""
    store = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    opened: list[ApiKeys] = []

    def make() -> ApiKeys:
        opened.append(open_api_keys(tmp_path, store))
        return opened[-1]

    yield make
    for o in opened:
        o.close()


def test_a_key_is_stored_only_as_its_hash_in_an_owner_only_file(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "proxy")
    key, record = store.add(subject="dr-alice", roles=["clinician", "clinician"], tenant="st-mary")
    assert looks_like_api_key(key) and len(key) == 4 + 8 + 1 + 43
    assert record.roles == ("clinician",) and record.key_id in key
    path = tmp_path / "proxy" / FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "proxy").stat().st_mode) == 0o700
    raw = path.read_bytes()
    secret = key.rsplit("_", 1)[1]
    assert key.encode() not in raw and secret.encode() not in raw
    assert hashlib.sha256(key.encode()).hexdigest().encode() in raw
    found = store.lookup(key)
    assert found is not None and found.subject == "dr-alice" and found.tenant == "st-mary"
    store.close()


def test_unknown_altered_and_revoked_keys_are_refused(keys: KeysFactory) -> None:
    store = keys()
    key, record = store.add(subject="dr-alice", roles=["clinician"])
    other, _ = store.add(subject="dr-bob", roles=["clinician"])
    last = key[-1]
    assert store.lookup(key[:-1] + ("A" if last != "A" else "B")) is None
    assert store.lookup(key + "x") is None and store.lookup("mck_" + "0" * 200) is None
    assert store.lookup("not-a-key") is None
    assert store.revoke(record.key_id)
    assert not store.revoke(record.key_id)  # already revoked
    assert store.lookup(key) is None
    assert store.lookup(other) is not None  # the others are untouched
    listed = {r.key_id: r for r in store.list()}
    assert listed[record.key_id].revoked is not None


def test_a_revocation_by_another_process_is_seen_at_once(keys: KeysFactory) -> None:
    """The running proxy and the CLI share the store: the proxy's store sees the revocation."""
    serving = keys()
    key, record = serving.add(subject="dr-alice", roles=["clinician"])
    assert serving.lookup(key) is not None
    cli = keys()
    assert cli.revoke(record.key_id)
    assert serving.lookup(key) is None


@pytest.mark.parametrize(("sub", "roles", "tenant"), [
    ("dr alice", ["clinician"], None), ("dr-alice", [], None), ("dr-alice", ["a b"], None),
    ("dr-alice", ["clinician"], "st mary"),
])
def test_bad_records_are_refused(keys: KeysFactory, sub: str, roles: list[str],
                                 tenant: str | None) -> None:
    with pytest.raises(InputError):
        keys().add(subject=sub, roles=roles, tenant=tenant)


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    ApiKeyStore(tmp_path).close()
    os.chmod(tmp_path / FILE, 0o644)
    with pytest.raises(InputError) as err:
        ApiKeyStore(tmp_path)
    assert err.value.code == "config.invalid"


def test_cli_add_list_revoke(tmp_path: Path) -> None:
    added = runner.invoke(app, ["proxy", "keys", "add", "--sub", "dr-alice", "--roles",
                                "clinician,researcher", "--tenant", "st-mary", "--data",
                                str(tmp_path)])
    assert added.exit_code == 0, added.output
    key = added.stdout.splitlines()[0]
    assert looks_like_api_key(key)
    listed = runner.invoke(app, ["proxy", "keys", "list", "--json", "--data", str(tmp_path)])
    (row,) = json.loads(listed.stdout)
    assert row["sub"] == "dr-alice" and row["roles"] == ["clinician", "researcher"]
    assert row["revoked"] is None and key not in listed.stdout
    assert runner.invoke(app, ["proxy", "keys", "revoke", row["id"], "--data",
                               str(tmp_path)]).exit_code == 0
    again = runner.invoke(app, ["proxy", "keys", "revoke", row["id"], "--data", str(tmp_path)])
    assert again.exit_code == 2
    bad = runner.invoke(app, ["proxy", "keys", "add", "--sub", "x y", "--roles", "c", "--data",
                              str(tmp_path)])
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error"]["code"] == "input.malformed"
    assert ApiKeyStore(tmp_path).lookup(key) is None


def test_serving_still_needs_upstream_and_policy() -> None:
    out = runner.invoke(app, ["proxy"])
    assert out.exit_code == 2 and "--upstream" in out.output


def test_keys_in_postgres_are_hashes_and_the_cli_takes_the_store(pg_url: str, tmp_path: Path
                                                                 ) -> None:
    added = runner.invoke(app, ["proxy", "keys", "add", "--sub", "dr-alice", "--roles",
                                "clinician", "--data", str(tmp_path), "--store", pg_url])
    assert added.exit_code == 0, added.output
    key = added.stdout.splitlines()[0]
    assert not (tmp_path / FILE).exists()  # nothing on this machine
    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT digest, subject FROM proxy_api_keys").fetchall()
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(), "dr-alice")]
    proxy_replica = open_api_keys(tmp_path, pg_url)
    try:
        found = proxy_replica.lookup(key)
        assert found is not None and found.roles == ("clinician",)
        listed = runner.invoke(app, ["proxy", "keys", "list", "--json", "--store", pg_url])
        (row,) = json.loads(listed.stdout)
        assert runner.invoke(app, ["proxy", "keys", "revoke", row["id"], "--store",
                                   pg_url]).exit_code == 0
        assert proxy_replica.lookup(key) is None
    finally:
        proxy_replica.close()
    with pytest.raises(InputError) as err:
        open_api_keys(tmp_path, "sqlite")
    assert err.value.code == "config.invalid"


def test_keys_fail_closed_without_their_database(pg_url: str, tmp_path: Path) -> None:
    from medclave.client.pg_apikeys import PostgresApiKeyStore
    from medclave.errors import AuthError

    store = PostgresApiKeyStore(pg_url)
    key, _ = store.add(subject="dr-alice", roles=["clinician"])
    store.pool.close()
    with pytest.raises(AuthError) as err:
        store.lookup(key)
    assert err.value.code == "auth.state_unavailable"
