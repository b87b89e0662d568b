"""``medclave enclave``: what a policy needs to name, and a boot that fails closed."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medclave.attestation.sim import SimAuthority, code_measurement
from medclave.cli import enclave as enclave_cli

runner = CliRunner()


def test_measurement_and_sim_root(tmp_path: Path) -> None:
    shown = runner.invoke(enclave_cli.app, ["measurement"])
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["measurement"] == code_measurement().hex()
    root = runner.invoke(enclave_cli.app, ["sim-root", "--data", str(tmp_path)])
    assert root.exit_code == 0
    assert json.loads(root.stdout)["sim_root"] == SimAuthority.load(tmp_path / "sim"
                                                                    ).root_fingerprint


def test_serve_without_a_tee_refuses_to_boot(tmp_path: Path) -> None:
    result = runner.invoke(enclave_cli.app, ["serve", "--data", str(tmp_path),
                                             "--platform", "auto", "--insecure-no-auth"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "attestation.unknown_platform"


def test_serve_on_sim_without_authorization_refuses_to_boot(tmp_path: Path) -> None:
    result = runner.invoke(enclave_cli.app, ["serve", "--data", str(tmp_path),
                                             "--platform", "sim", "--audit-store", "memory"])
    assert result.exit_code == 2
    assert "WARNING: platform sim is NOT a TEE" in result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["error"]["code"] == (
        "config.invalid")
