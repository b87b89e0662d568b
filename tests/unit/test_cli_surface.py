"""The command surface the README and the issues promise: every documented command exists."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from medclave.cli.main import app

runner = CliRunner()

DOCUMENTED = [
    ["attest", "verify"],
    ["model", "seal"], ["model", "inspect"], ["model", "unseal"],
    ["kbs", "serve"], ["kbs", "resource", "put"], ["kbs", "resource", "rotate"],
    ["kbs", "resource", "list"], ["kbs", "policy", "set"], ["kbs", "policy", "show"],
    ["kbs", "mesh", "database"],
    ["enclave", "serve"], ["proxy"], ["proxy", "keys", "add"], ["proxy", "keys", "list"],
    ["proxy", "keys", "revoke"],
    ["audit", "verify"], ["audit", "prove"], ["audit", "receipt", "verify"], ["audit", "replay"],
    ["audit", "export"], ["audit", "witness"],
    ["auth", "token", "issue"], ["auth", "token", "verify"], ["auth", "decide"],
    ["idp", "serve"], ["idp", "add-client"], ["idp", "add-user"],
    ["fl", "create"], ["fl", "serve"], ["fl", "challenge"], ["fl", "admit"], ["fl", "run"],
    ["fl", "status"], ["fl", "demo"], ["fl", "site", "init"], ["fl", "site", "attest"],
    ["fl", "site", "serve"],
    ["records", "ingest"], ["records", "search"],
]


@pytest.mark.parametrize("words", DOCUMENTED, ids=" ".join)
def test_documented_command_exists(words: list[str]) -> None:
    result = runner.invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_proxy_is_one_command_with_upstream_and_policy() -> None:
    out = runner.invoke(app, ["proxy", "--help"]).output
    assert "--upstream" in out and "--policy" in out and "--port" in out


def test_attest_verify_has_the_scripted_options() -> None:
    out = runner.invoke(app, ["attest", "verify", "--help"]).output
    for option in ("--cert", "--collateral", "--nonce", "--policy", "--at", "--json"):
        assert option in out
