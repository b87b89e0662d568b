"""`medclave auth token issue|verify`, `auth decide` and `idp` commands, through CliRunner."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclave.auth.idp_server import build_service
from medclave.background import running
from medclave.cli import auth as auth_cli
from medclave.cli import idp as idp_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "authz"
ISSUER = "http://127.0.0.1:8800"


def run(app, *args: str, **kw: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), **kw)


def issue(data: Path, *extra: str) -> str:
    result = run(
        auth_cli.app,
        "token",
        "issue",
        "--sub",
        "dr-alice",
        "--tenant",
        "st-mary",
        "--roles",
        "clinician,admin",
        "--data",
        str(data),
        *extra,
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def jwks_file(data: Path, tmp_path: Path) -> Path:
    result = run(idp_cli.app, "jwks", "--data", str(data))
    assert result.exit_code == 0, result.output
    path = tmp_path / "jwks.json"
    path.write_text(result.stdout)
    return path


def test_issue_and_verify_with_a_jwks_file(tmp_path: Path) -> None:
    data = tmp_path / "idp"
    token = issue(data, "--ttl", "10m")
    assert stat.S_IMODE((data / "signing-key.pem").stat().st_mode) == 0o600
    keys = jwks_file(data, tmp_path)
    result = run(auth_cli.app, "token", "verify", token, "--jwks", str(keys), "--json")
    assert result.exit_code == 0, result.output
    claims = json.loads(result.stdout)
    assert claims["sub"] == "dr-alice"
    assert claims["roles"] == ["clinician", "admin"]
    assert claims["iss"] == ISSUER
    text = run(auth_cli.app, "token", "verify", token, "--jwks", str(keys), "--issuer", ISSUER)
    assert text.exit_code == 0 and "tenant: st-mary" in text.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--audience", "other"], "auth.audience_mismatch"),
        (["--issuer", "https://idp.example"], "auth.issuer_untrusted"),
        (["--at", (datetime.now(UTC) + timedelta(minutes=30)).isoformat()], "auth.token_expired"),
        (["--at", (datetime.now(UTC) - timedelta(minutes=30)).isoformat()], "auth.token_not_yet_valid"),
    ],
)
def test_verify_refusals_print_a_stable_code_and_exit_1(tmp_path: Path, args: list[str], code: str) -> None:
    data = tmp_path / "idp"
    token = issue(data)
    keys = jwks_file(data, tmp_path)
    result = run(auth_cli.app, "token", "verify", token, "--jwks", str(keys), "--json", *args)
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_verify_forged_and_missing_inputs(tmp_path: Path) -> None:
    data = tmp_path / "idp"
    keys = jwks_file(data, tmp_path)
    forged = issue(tmp_path / "other-idp")  # signed by another key
    result = run(auth_cli.app, "token", "verify", forged, "--jwks", str(keys), "--json")
    assert json.loads(result.stdout)["error"]["code"] in {"auth.key_unknown", "auth.signature_invalid"}
    assert result.exit_code == 1
    # No --issuer, no --jwks, and no local issuer key: unusable input, exit 2.
    missing = run(auth_cli.app, "token", "verify", forged, "--json", "--data", str(tmp_path / "no"))
    assert json.loads(missing.stdout) == {"ok": False, "error": {
        "code": "input.missing", "message": json.loads(missing.stdout)["error"]["message"]}}
    assert missing.exit_code == 2
    text = run(auth_cli.app, "token", "verify", "x.y.z", "--jwks", str(keys))
    assert text.exit_code == 1 and "auth.token_malformed" in text.output


def test_verify_against_a_running_issuer(tmp_path: Path) -> None:
    def factory(url: str):  # type: ignore[no-untyped-def]
        return build_service(tmp_path, issuer=url)

    with running(factory) as (url, _):
        token = issue(tmp_path, "--issuer", url)
        result = run(auth_cli.app, "token", "verify", token, "--issuer", url, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["iss"] == url


def test_issue_refuses_long_lifetimes(tmp_path: Path) -> None:
    result = run(
        auth_cli.app, "token", "issue", "--sub", "a", "--tenant", "t", "--ttl", "16m", "--data", str(tmp_path)
    )
    assert result.exit_code == 2  # unusable input, as everywhere (medclave.cli.output)
    assert "input.malformed" in result.output


def test_verify_defaults_to_the_local_issuer_key(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # `token issue` signs with the local key by default; `token verify` checks with it.
    monkeypatch.chdir(tmp_path)
    token = run(auth_cli.app, "token", "issue", "--sub", "dr-alice", "--tenant", "st-mary",
                "--roles", "clinician").stdout.strip()
    result = run(auth_cli.app, "token", "verify", token, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sub"] == "dr-alice"
    # The local key is the trust anchor: a token of another issuer key is refused, exit 1.
    forged = issue(tmp_path / "other-idp")
    refused = run(auth_cli.app, "token", "verify", forged, "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["error"]["code"] in {"auth.key_unknown",
                                                          "auth.signature_invalid"}
    # A token altered by one byte of its payload is refused too.
    head, payload, sig = token.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    altered = run(auth_cli.app, "token", "verify", f"{head}.{flipped}.{sig}", "--json")
    assert altered.exit_code == 1, altered.output


def test_decide_exit_codes(tmp_path: Path) -> None:
    entities = str(EXAMPLES / "entities.json")
    allow = run(
        auth_cli.app,
        "decide",
        "--entities",
        entities,
        "--request",
        str(EXAMPLES / "requests" / "01-clinician-care-team.json"),
    )
    assert allow.exit_code == 0 and allow.stdout.startswith("allow")
    deny = run(
        auth_cli.app,
        "decide",
        "--entities",
        entities,
        "--request",
        str(EXAMPLES / "requests" / "13-cross-tenant-document.json"),
    )
    assert deny.exit_code == 1 and "tenant-isolation" in deny.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"principal": 'User::"dr-alice"', "action": 'Action::"fly"', "resource": 'Tenant::"x"'})
    )
    unusable = run(auth_cli.app, "decide", "--entities", entities, "--request", str(bad), "--json")
    assert unusable.exit_code == 2
    assert json.loads(unusable.stdout)["error"]["code"] == "input.malformed"
    # A policy folder of your own, evaluated against the shipped schema.
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "only.cedar").write_text('@id("nobody") forbid(principal, action, resource);')
    custom = run(
        auth_cli.app,
        "decide",
        "--policies",
        str(policies),
        "--entities",
        entities,
        "--request",
        str(EXAMPLES / "requests" / "01-clinician-care-team.json"),
        "--json",
    )
    assert custom.exit_code == 1
    assert json.loads(custom.stdout)["reasons"] == ["nobody"]


def test_idp_add_client_and_user(tmp_path: Path) -> None:
    result = run(
        idp_cli.app,
        "add-client",
        "gw",
        "--tenant",
        "st-mary",
        "--roles",
        "service",
        "--data",
        str(tmp_path),
        input="a long enough secret\n",
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "clients.json").stat().st_mode) == 0o600
    short = run(
        idp_cli.app, "add-user", "u", "--tenant", "st-mary", "--password", "short", "--data", str(tmp_path)
    )
    assert short.exit_code == 2
