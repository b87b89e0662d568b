"""``medclave fl`` as an operator and a site use it, up to the refusals that need no SuperLink
(a refused site is never registered, so none is started here)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medclave.cli.main import app

runner = CliRunner()


def _ok(args: list[str]) -> dict[str, object]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out: dict[str, object] = json.loads(result.output[result.output.index("{"):])
    return out


def test_operator_and_site_commands(tmp_path: Path) -> None:
    fed, site_a, site_b = tmp_path / "fed", tmp_path / "a", tmp_path / "b"
    created = _ok(["fl", "create", str(fed), "--id", "rare-tumour"])
    assert created["federation"] == "rare-tumour"
    assert (fed / "tls" / "ca.pem").exists() and (fed / "app" / "pyproject.toml").exists()
    for site, name in ((site_a, "a"), (site_b, "b")):
        _ok(["fl", "site", "init", str(site), "--site", name, "--federation", "rare-tumour",
             "--policy", str(fed / "policy.toml"), "--sim-dir", str(fed / "sim")])
    nonce = _ok(["fl", "challenge", str(fed), "--site", "a"])["nonce"]
    assert isinstance(nonce, str)
    evidence = tmp_path / "a-evidence.json"
    _ok(["fl", "site", "attest", str(site_a), "--nonce", nonce, "--out", str(evidence)])

    # a's evidence, presented with b's key: refused (exit 1), with its code.
    refused = runner.invoke(app, ["fl", "admit", str(fed), "--site", "a", "--evidence",
                                  str(evidence), "--public-key", str(site_b / "node.pub")])
    assert refused.exit_code == 1, refused.output
    assert json.loads(refused.output)["error"]["code"] == "fl.node_key_mismatch"
    # The nonce was spent by that attempt: the same evidence with the right key is refused too.
    again = runner.invoke(app, ["fl", "admit", str(fed), "--site", "a", "--evidence",
                                str(evidence), "--public-key", str(site_a / "node.pub")])
    assert json.loads(again.output)["error"]["code"] == "fl.nonce_unknown"
    assert _ok(["fl", "status", str(fed)])["members"] == {}
