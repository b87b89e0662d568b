"""``medclave scribe AUDIO --proxy URL [--patient ID] --json`` against the running stack."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medclave.cli.main import app
from tests.scribe.conftest import Stack


def test_scribe_command(stack: Stack, spoken: dict[str, bytes], tmp_path: Path) -> None:
    audio = tmp_path / "visit.wav"
    audio.write_bytes(spoken["hypertension"])
    runner = CliRunner()
    result = runner.invoke(app, ["scribe", str(audio), "--proxy", stack.proxy_url,
                                 "--patient", "pat-3", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["fhir"]["subject"]["reference"] == "Patient/pat-3"
    assert "hypertension" in " ".join(s["text"] for s in body["note"]["sections"]["assessment"]
                                      ).lower()
    assert "I10" in {c["code"] for c in body["codes"][:3]}
    text = runner.invoke(app, ["scribe", str(audio), "--proxy", stack.proxy_url])
    assert text.exit_code == 0 and "Assessment:" in text.output and "I10" in text.output


def test_scribe_command_refusals(stack: Stack, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["scribe", str(tmp_path / "none.wav"), "--proxy",
                                  stack.proxy_url, "--json"])
    assert missing.exit_code == 2 and json.loads(missing.output)["error"]["code"] == "input.missing"
    assert json.loads(missing.output)["ok"] is False
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    refused = runner.invoke(app, ["scribe", str(junk), "--proxy", stack.proxy_url, "--json"])
    # The enclave's refusal, in the one error shape; exit 2: an input.* code is unusable input.
    assert refused.exit_code == 2
    body = json.loads(refused.output)
    assert body["ok"] is False and body["error"]["code"] == "input.audio_unreadable"
    gone = runner.invoke(app, ["scribe", str(junk), "--proxy", "http://127.0.0.1:9", "--json"])
    assert gone.exit_code == 1
    assert json.loads(gone.output)["error"]["code"] == "client.upstream_failed"
