"""Local API keys: shown once, stored only as a hash in an owner-only file, revocable at once."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclave.cli.main import app
from medclave.client.apikeys import FILE, ApiKeyStore, looks_like_api_key
from medclave.errors import InputError

runner = CliRunner()


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


def test_unknown_altered_and_revoked_keys_are_refused(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path)
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


def test_a_revocation_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    """The running proxy and the CLI share the file: the proxy's store sees the revocation."""
    serving = ApiKeyStore(tmp_path)
    key, record = serving.add(subject="dr-alice", roles=["clinician"])
    assert serving.lookup(key) is not None
    cli = ApiKeyStore(tmp_path)
    assert cli.revoke(record.key_id)
    cli.close()
    assert serving.lookup(key) is None


@pytest.mark.parametrize(("sub", "roles", "tenant"), [
    ("dr alice", ["clinician"], None), ("dr-alice", [], None), ("dr-alice", ["a b"], None),
    ("dr-alice", ["clinician"], "st mary"),
])
def test_bad_records_are_refused(tmp_path: Path, sub: str, roles: list[str],
                                 tenant: str | None) -> None:
    with pytest.raises(InputError):
        ApiKeyStore(tmp_path).add(subject=sub, roles=roles, tenant=tenant)


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
