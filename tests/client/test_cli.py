"""``medclave proxy``: refuses a bad policy before listening; passes its options through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.cli import proxy as proxy_cli
from medclave.client import proxy as proxy_module

runner = CliRunner()


def test_a_missing_or_invalid_policy_is_refused_before_listening(tmp_path: Path) -> None:
    missing = runner.invoke(proxy_cli.app, ["--upstream", "http://127.0.0.1:9",
                                            "--policy", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["error"]["code"] == "policy.invalid"
    empty = tmp_path / "empty.toml"
    empty.write_text("allow_debug = false\n")
    refused = runner.invoke(proxy_cli.app, ["--upstream", "http://127.0.0.1:9",
                                            "--policy", str(empty)])
    assert refused.exit_code == 2
    assert json.loads(refused.stdout)["error"]["code"] == "policy.empty"


def test_options_reach_the_proxy_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["sim"]\n')
    seen: list[Any] = []
    monkeypatch.setattr(proxy_module, "serve", seen.append)
    result = runner.invoke(proxy_cli.app, ["--upstream", "http://127.0.0.1:8443",
                                           "--policy", str(policy), "--port", "9090",
                                           "--sim-root", "ab" * 32])
    assert result.exit_code == 0, result.output
    settings = seen[0]
    assert (settings.upstream, settings.port, settings.host) == (
        "http://127.0.0.1:8443", 9090, "127.0.0.1")
    assert settings.sim_roots == ("ab" * 32,)
    assert "NOT a TEE" in result.output
