"""Configuration: TOML file < MEDCLAVE_* variables < flags, validated with a coded error naming
the field; ``medclave config show`` prints the effective settings with secrets masked; a broker
started from a config file alone is healthy, scrapeable and logs JSON (issue 16)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from medclave.cli.main import app
from medclave.errors import MedclaveError
from medclave.kbs.settings import KbsSettings
from medclave.ops.config import load_settings
from tests.ops.helpers import free_port, samples, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEK = base64.b64encode(b"K" * 32).decode()


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    file = _toml(tmp_path / "kbs.toml", 'port = 1111\nstore = "memory"\nlog_level = "DEBUG"\n')
    assert load_settings(KbsSettings, config_file=file).port == 1111
    monkeypatch.setenv("MEDCLAVE_KBS_PORT", "2222")
    got = load_settings(KbsSettings, config_file=file)
    assert (got.port, got.store, got.log_level) == (2222, "memory", "DEBUG")
    assert load_settings(KbsSettings, config_file=file, overrides={"port": 3333}).port == 3333
    # A flag left unset (None) does not hide the lower sources.
    assert load_settings(KbsSettings, config_file=file, overrides={"port": None}).port == 2222
    assert type(got) is KbsSettings and got.db_path == got.data_dir / "kbs.sqlite3"


@pytest.mark.parametrize(("text", "named"), [
    ("prot = 8450\n", "prot"),                       # a misspelt key is refused, never ignored
    ('port = "eighty"\n', "port"),
    ("port = 70000\n", "port"),
    ('store = "postgres"\n', "store"),
    ('trusted_proxies = ["*"]\n', "trusted_proxies"),
    ("port = \n", "not TOML"),
])
def test_a_bad_file_is_refused_naming_the_field(tmp_path: Path, text: str, named: str) -> None:
    file = _toml(tmp_path / "kbs.toml", text)
    with pytest.raises(MedclaveError) as caught:
        load_settings(KbsSettings, config_file=file)
    assert caught.value.code == "config.invalid"
    assert named in caught.value.detail


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MedclaveError) as caught:
        load_settings(KbsSettings, config_file=tmp_path / "nope.toml")
    assert caught.value.code == "config.invalid"


def test_config_show_prints_the_effective_settings_without_secrets(tmp_path: Path) -> None:
    file = _toml(tmp_path / "kbs.toml", f'port = 9999\nkek = "{KEK}"\nmetrics_port = 9100\n')
    result = CliRunner().invoke(app, ["config", "show", "kbs", "--config", str(file)],
                                env={"MEDCLAVE_KBS_SIGNING_KEY": KEK})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["service"] == "kbs"
    assert shown["settings"]["port"] == 9999 and shown["settings"]["metrics_port"] == 9100
    assert shown["settings"]["kek"] == "**********"
    assert shown["settings"]["signing_key"] == "**********"
    assert KEK not in result.output


def test_config_show_refuses_an_invalid_configuration_with_its_code(tmp_path: Path) -> None:
    file = _toml(tmp_path / "proxy.toml", "port = 8080\n")  # no upstream, no policy_file
    result = CliRunner().invoke(app, ["config", "show", "proxy", "--config", str(file)])
    assert result.exit_code == 2
    error = json.loads(result.output)["error"]
    assert error["code"] == "config.invalid" and "upstream" in error["message"]


@pytest.mark.parametrize("service", ["enclave", "kbs", "idp", "proxy"])
def test_every_service_has_a_settings_model_for_config_show(service: str,
                                                            tmp_path: Path) -> None:
    file = _toml(tmp_path / "s.toml", 'upstream = "http://127.0.0.1:1"\npolicy_file = "p.toml"\n'
                 if service == "proxy" else 'log_level = "WARNING"\n')
    result = CliRunner().invoke(app, ["config", "show", service, "--config", str(file)])
    assert result.exit_code == 0, result.output
    assert "metrics_port" in json.loads(result.output)["settings"]


def test_a_broker_runs_from_its_config_file(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    file = _toml(tmp_path / "kbs.toml", "\n".join([
        f"port = {port}", f"metrics_port = {metrics_port}", f'data_dir = "{tmp_path / "data"}"',
        'log_format = "json"', 'log_level = "INFO"', ""]))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "medclave.cli.main", "kbs", "serve",
                             "--config", str(file)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_for(lambda: (r := httpx.get(url + "/readyz")).status_code == 200 and r,
                         timeout=60)
        assert ready.json()["checks"] == {"draining": "ok", "store": "ok", "signing_key": "ok"}
        # A refusal, which must reach the log at INFO.
        assert httpx.get(url + "/kbs/v1/owner/resources").status_code in (401, 404)
        scraped = samples(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        assert any(name == "medclave_refusals_total" and value >= 1
                   for name, _, value in scraped)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in proc.stderr.read().splitlines()]
    assert all(line["service"] == "kbs" for line in lines)
    assert any(line["logger"] == "medclave.kbs" and "refused" in line["message"]
               and line["level"] == "INFO" for line in lines)
    assert (tmp_path / "data" / "kbs.sqlite3").exists()
