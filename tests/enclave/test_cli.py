"""``medclave enclave``: what a policy needs to name, and a boot that fails closed."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

import medclave
from medclave.cli import enclave as enclave_cli

runner = CliRunner()


def _expected_measurement() -> str:
    """The sim measurement recomputed from its definition (sim.code_measurement's docstring),
    not by calling it: SHA-384 over a label, then each .py and .cedar file of the installed
    package in path order, as u32 length || relative path || u64 length || content."""
    root = Path(medclave.__file__).parent
    digest = hashlib.sha384(b"medclave-sim-measurement-v1\0")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".cedar")
                    and "__pycache__" not in p.relative_to(root).parts), key=lambda p: str(p))
    for path in files:
        rel = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        digest.update(len(rel).to_bytes(4, "big") + rel + len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def _pem_sha256(path: Path) -> str:
    """SHA-256 of a PEM certificate's DER, read by hand (RFC 7468), not through the code."""
    body = "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body, validate=True)).hexdigest()


def test_measurement_and_sim_root(tmp_path: Path) -> None:
    shown = runner.invoke(enclave_cli.app, ["measurement"])
    assert shown.exit_code == 0
    measurement = json.loads(shown.stdout)["measurement"]
    assert len(measurement) == 96 and measurement == _expected_measurement()
    root = runner.invoke(enclave_cli.app, ["sim-root", "--data", str(tmp_path)])
    assert root.exit_code == 0
    # The root the command names is the ARK it wrote to the data folder, the one clients pin.
    assert json.loads(root.stdout)["sim_root"] == _pem_sha256(tmp_path / "sim" / "ark.pem")
    again = runner.invoke(enclave_cli.app, ["sim-root", "--data", str(tmp_path)])
    assert json.loads(again.stdout)["sim_root"] == json.loads(root.stdout)["sim_root"]


def test_serve_without_a_tee_refuses_to_boot(tmp_path: Path) -> None:
    result = runner.invoke(enclave_cli.app, ["serve", "--data", str(tmp_path),
                                             "--platform", "auto", "--insecure-no-auth"])
    assert result.exit_code == 2  # no TEE to use: unusable configuration (use --platform sim)
    assert json.loads(result.stdout)["error"]["code"] == "attestation.unknown_platform"


def test_serve_on_sim_without_authorization_refuses_to_boot(tmp_path: Path) -> None:
    result = runner.invoke(enclave_cli.app, ["serve", "--data", str(tmp_path),
                                             "--platform", "sim", "--audit-store", "memory"])
    assert result.exit_code == 2
    assert "WARNING: platform sim is NOT a TEE" in result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["error"]["code"] == (
        "config.invalid")
