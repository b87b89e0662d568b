"""``medclave kbs`` and ``medclave model`` through Typer's CliRunner, against a live broker."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.attestation import sim
from medclave.cli import kbs as kbs_cli
from medclave.cli import model as model_cli
from medclave.kbs.client import KbsClient
from medclave.kbs.sealed_models import load_sealed_model
from medclave.kbs.settings import KbsSettings
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.tokens import authenticate
from tests.kbs.conftest import Live
from tests.kbs.helpers import RESOURCE, sim_attester, sim_policy, trusting

LiveFactory = Callable[..., Live]
runner = CliRunner()


def run(app: Any, *args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (result.output, result.exception)
    return json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture
def live(live_factory: LiveFactory, authority: sim.SimAuthority) -> Live:
    return live_factory(sim_roots=(authority.root_fingerprint,))


def test_resource_and_policy_commands(live: Live, tmp_path: Path) -> None:
    env = {"MEDCLAVE_KBS_URL": live.url, "MEDCLAVE_KBS_TOKEN": live.token("vendor")}
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"s" * 32)
    assert run(kbs_cli.app, "resource", "put", RESOURCE, "--secret-file", str(secret),
               env=env) == {"resource": RESOURCE, "version": 1}
    assert run(kbs_cli.app, "resource", "rotate", RESOURCE, env=env)["version"] == 2
    out = run(kbs_cli.app, "resource", "rotate", RESOURCE, "--expected-version", "1", env=env,
              code=1)
    assert out["error"]["code"] == "kbs.conflict"
    listed = run(kbs_cli.app, "resource", "list", env=env)
    assert listed[0]["versions"] == [1, 2]
    run(kbs_cli.app, "resource", "retire", RESOURCE, "1", env=env)
    policy = tmp_path / "policy.json"
    policy.write_text(sim_policy().to_json())
    set_out = run(kbs_cli.app, "policy", "set", RESOURCE, str(policy), env=env)
    assert set_out["version"] == 1 and set_out["digest"] == sim_policy().digest()
    toml = tmp_path / "policy.toml"
    toml.write_text('requesters = ["st-marys"]\n[appraisal]\nplatforms = ["sim"]\n')
    assert run(kbs_cli.app, "policy", "set", RESOURCE, str(toml), env=env)["version"] == 2
    shown = run(kbs_cli.app, "policy", "show", RESOURCE, "--version", "1", env=env)
    assert shown["policy"]["appraisal"]["platforms"] == ["sim"] and shown["versions"] == [1, 2]
    run(kbs_cli.app, "policy", "retire", RESOURCE, "1", env=env)
    decisions = run(kbs_cli.app, "decisions", "--resource", RESOURCE, env=env)
    assert decisions[0]["action"] == "policy_retire"
    run(kbs_cli.app, "resource", "delete", RESOURCE, env=env)
    assert run(kbs_cli.app, "resource", "list", env=env) == []


def test_cli_refusals_and_exit_codes(live: Live, tmp_path: Path) -> None:
    env = {"MEDCLAVE_KBS_URL": live.url, "MEDCLAVE_KBS_TOKEN": "mkt1.vendor.wrong"}
    out = run(kbs_cli.app, "resource", "list", env=env, code=1)
    assert out["error"]["code"] == "auth.invalid_credentials"
    env["MEDCLAVE_KBS_TOKEN"] = live.token("hospital")
    out = run(kbs_cli.app, "resource", "put", RESOURCE, env=env, code=1)
    assert out["error"]["code"] == "kbs.not_found"
    out = run(kbs_cli.app, "resource", "put", "kbs:///bad name", env=env, code=2)
    assert out["error"]["code"] == "input.malformed"
    bad = tmp_path / "p.toml"
    bad.write_text("platforms = []\n")
    out = run(kbs_cli.app, "policy", "set", "kbs:///hospital/data-key/x", str(bad), env=env,
              code=2)
    assert out["error"]["code"] == "policy.empty"
    env["MEDCLAVE_KBS_URL"] = "http://127.0.0.1:9"
    assert run(kbs_cli.app, "resource", "list", env=env, code=1)["error"]["code"] == \
        "kbs.unavailable"


def test_owner_add_on_the_data_folder(tmp_path: Path) -> None:
    out = run(kbs_cli.app, "owner", "add", "vendor", "--data", str(tmp_path / "kbs"))
    assert out["owner"] == "vendor"
    assert (tmp_path / "kbs").stat().st_mode & 0o777 == 0o700
    store = SqliteKbsStore(tmp_path / "kbs" / "kbs.sqlite3")
    try:
        assert authenticate(store, out["token"]) == "vendor"
    finally:
        store.close()
    assert run(kbs_cli.app, "owner", "add", "Bad.Name", "--data", str(tmp_path / "kbs"),
               code=2)["error"]["code"] == "input.malformed"


def test_serve_passes_flags_into_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[KbsSettings] = []
    monkeypatch.setattr("medclave.kbs.server.serve", seen.append)
    result = runner.invoke(kbs_cli.app, ["serve", "--port", "9999", "--data", str(tmp_path),
                                         "--sim-root", "ab" * 32])
    assert result.exit_code == 0, result.output
    assert seen[0].port == 9999 and seen[0].data_dir == tmp_path and seen[0].host == "127.0.0.1"
    assert seen[0].sim_roots == ("ab" * 32,)
    assert "sim protects nothing" in result.output


def test_model_seal_inspect_and_load(live: Live, authority: sim.SimAuthority,
                                     tmp_path: Path) -> None:
    weights = os.urandom(20_000)
    (tmp_path / "llama.gguf").write_bytes(weights)
    token = live.token("vendor")
    owner_key = tmp_path / "owner.key"
    keys = run(model_cli.app, "keygen", "--out", str(owner_key))
    assert Path(keys["public_key_file"]).exists()
    out = run(model_cli.app, "seal", str(tmp_path / "llama.gguf"), "--out", str(tmp_path / "s"),
              "--owner", "vendor", "--kbs", live.url, "--owner-key", keys["public_key_file"],
              "--chunk-size", "4096", env={"MEDCLAVE_KBS_TOKEN": token})
    assert out["key"]["resource"] == RESOURCE and out["key"]["version"] == 1
    assert out["manifest"]["chunk_count"] == 5
    shown = run(model_cli.app, "inspect", str(tmp_path / "s"))
    assert shown["manifest"] == out["manifest"] and shown["owner_sealed_key"] is True
    # The enclave's path: broker release under a policy naming this model.
    from medclave.kbs.client import OwnerClient

    with OwnerClient(live.url, token) as owner:
        owner.set_policy(RESOURCE, sim_policy(model_digests=(out["manifest"]["plaintext_sha256"],)))
    runtime = {"model_digest": out["manifest"]["plaintext_sha256"]}
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker),
                   runtime=runtime) as client:
        fd, _, _ = load_sealed_model(client, tmp_path / "s")
    with os.fdopen(fd, "rb") as fh:
        assert fh.read() == weights
    # The owner's path, without a broker.
    done = run(model_cli.app, "unseal", str(tmp_path / "s"), "--key", str(owner_key), "--out",
               str(tmp_path / "plain.gguf"))
    assert done["sha256"] == out["manifest"]["plaintext_sha256"]
    assert (tmp_path / "plain.gguf").read_bytes() == weights


def test_model_cli_refusals(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(b"w" * 100)
    out = run(model_cli.app, "seal", str(tmp_path / "m.bin"), "--out", str(tmp_path / "s"),
              "--owner", "vendor", code=2)
    assert out["error"]["code"] == "input.missing"
    result = runner.invoke(model_cli.app, ["seal", str(tmp_path / "m.bin"), "--out",
                                           str(tmp_path / "s"), "--owner", "vendor", "--kbs",
                                           "http://127.0.0.1:9"], env={"MEDCLAVE_KBS_TOKEN": ""})
    assert result.exit_code == 2
    assert run(model_cli.app, "inspect", str(tmp_path), code=2)["error"]["code"] == \
        "model.manifest_invalid"
    keys = run(model_cli.app, "keygen", "--out", str(tmp_path / "k"))
    run(model_cli.app, "seal", str(tmp_path / "m.bin"), "--out", str(tmp_path / "s"), "--owner",
        "vendor", "--owner-key", keys["public_key_file"])
    payload = tmp_path / "s" / "model.sealed"
    payload.write_bytes(payload.read_bytes()[:-1])
    out = run(model_cli.app, "unseal", str(tmp_path / "s"), "--key", str(tmp_path / "k"),
              "--out", str(tmp_path / "p"), code=1)
    assert out["error"]["code"] == "model.truncated" and not (tmp_path / "p").exists()
    run(model_cli.app, "keygen", "--out", str(tmp_path / "other"))
    out = run(model_cli.app, "unseal", str(tmp_path / "s"), "--key", str(tmp_path / "other"),
              "--out", str(tmp_path / "p"), code=1)
    assert out["error"]["code"] == "model.key_invalid"
