"""One error shape and one meaning of the exit status in every command group
(``medclave.cli.output``): 0 done, 1 refused, 2 unusable input; ``--json`` errors are
``{"ok": false, "error": {"code", "message"}}`` on stdout, text errors ``error: CODE: ...`` on
stderr. Each group is driven through the real ``medclave`` app to one unusable input and,
where a refusal is cheap to provoke, one refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from medclave.cli.main import app
from medclave.cli.output import exit_code
from medclave.errors import CATALOGUE, MedclaveError

runner = CliRunner()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def json_error(result: Result) -> dict[str, Any]:
    body = json.loads(result.stdout)
    assert body["ok"] is False, body
    error = body["error"]
    assert set(error) <= {"code", "message", "where"} and error["code"] in CATALOGUE
    assert isinstance(error["message"], str) and error["message"]
    return error


def text_error(result: Result) -> str:
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr
    code = line.split(": ", 2)[1]
    assert code in CATALOGUE
    return code


def test_exit_status_is_a_function_of_the_code_alone() -> None:
    for code in CATALOGUE:
        expected = 2 if code.split(".")[0] in ("input", "config") else None
        got = exit_code(MedclaveError(code, "x"))
        assert got in (1, 2)
        if expected is not None:
            assert got == expected, code
    assert exit_code(MedclaveError("input.missing", "x")) == 2
    assert exit_code(MedclaveError("attestation.signature_invalid", "x")) == 1


def test_attest(tmp_path: Path) -> None:
    result = invoke("attest", "verify", str(tmp_path / "absent.bin"), "--json")
    assert result.exit_code == 2
    assert json_error(result)["code"] == "attestation.malformed"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 10)
    assert invoke("attest", "verify", str(junk), "--json").exit_code == 2


def test_audit(tmp_path: Path) -> None:
    receipt = tmp_path / "r.json"
    receipt.write_text("{}")
    result = invoke("audit", "receipt", "verify", str(receipt), "--key", "not a key")
    assert result.exit_code == 2 and json_error(result)["code"] == "crypto.bad_key"
    key = invoke("audit", "keygen", "log.example/a", "--out", str(tmp_path / "k"))
    assert key.exit_code == 0
    again = invoke("audit", "keygen", "log.example/a", "--out", str(tmp_path / "k"))
    assert again.exit_code == 2 and json_error(again)["code"] == "input.malformed"


def test_auth(tmp_path: Path) -> None:
    missing = invoke("auth", "token", "verify", "a.b.c", "--json", "--data", str(tmp_path))
    assert missing.exit_code == 2 and json_error(missing)["code"] == "input.missing"
    text = invoke("auth", "token", "verify", "a.b.c", "--data", str(tmp_path))
    assert text.exit_code == 2 and text_error(text) == "input.missing"
    token = invoke("auth", "token", "issue", "--sub", "a", "--tenant", "t",
                   "--data", str(tmp_path / "idp")).stdout.strip()
    other = invoke("auth", "token", "issue", "--sub", "a", "--tenant", "t",
                   "--data", str(tmp_path / "other")).stdout.strip()
    assert invoke("auth", "token", "verify", token, "--data", str(tmp_path / "idp")).exit_code == 0
    refused = invoke("auth", "token", "verify", other, "--json", "--data", str(tmp_path / "idp"))
    assert refused.exit_code == 1 and json_error(refused)["code"].startswith("auth.")


def test_enclave(tmp_path: Path) -> None:
    result = invoke("enclave", "serve", "--data", str(tmp_path), "--platform", "auto",
                    "--insecure-no-auth")
    assert result.exit_code == 2 and json_error(result)["code"] == "attestation.unknown_platform"


def test_idp(tmp_path: Path) -> None:
    result = invoke("idp", "add-user", "no spaces allowed", "--tenant", "t", "--roles", "r",
                    "--no-password", "--data", str(tmp_path))
    assert result.exit_code == 2 and text_error(result) == "input.malformed"


def test_kbs(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text("{not json")
    result = invoke("kbs", "policy", "set", "kbs:///vendor/model-key/m", str(policy),
                    "--url", "http://127.0.0.1:9", "--token", "mkt1.vendor.x")
    assert result.exit_code == 2 and json_error(result)["code"].startswith(("input.", "policy."))
    down = invoke("kbs", "resource", "list", "--url", "http://127.0.0.1:9",
                  "--token", "mkt1.vendor.x")
    assert down.exit_code == 1, down.output
    json_error(down)


def test_model(tmp_path: Path) -> None:
    result = invoke("model", "inspect", str(tmp_path / "absent"))
    assert result.exit_code == 2 and json_error(result)["code"] == "model.manifest_invalid"
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights" * 100)
    assert invoke("model", "keygen", "--out", str(tmp_path / "owner.key")).exit_code == 0
    assert invoke("model", "keygen", "--out", str(tmp_path / "stranger.key")).exit_code == 0
    sealed = invoke("model", "seal", str(weights), "--out", str(tmp_path / "sealed"),
                    "--owner", "vendor", "--owner-key", str(tmp_path / "owner.key.pub"))
    assert sealed.exit_code == 0, sealed.output
    refused = invoke("model", "unseal", str(tmp_path / "sealed"), "--key",
                     str(tmp_path / "stranger.key"), "--out", str(tmp_path / "plain"))
    assert refused.exit_code == 1 and json_error(refused)["code"] == "model.key_invalid"


@pytest.mark.parametrize("as_json", [False, True])
def test_proxy(tmp_path: Path, as_json: bool) -> None:
    if as_json:
        result = invoke("proxy", "--upstream", "http://127.0.0.1:9", "--policy",
                        str(tmp_path / "absent.toml"))
        assert result.exit_code == 2 and json_error(result)["code"].startswith(("input.", "policy."))
    else:
        result = invoke("proxy", "keys", "revoke", "nope", "--data", str(tmp_path))
        assert result.exit_code == 2 and text_error(result) == "input.missing"


# --- the command groups that came later follow the same rules --------------------------------


def test_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'not a port'\n")
    result = invoke("config", "show", "kbs", "--config", str(bad))
    assert result.exit_code == 2 and json_error(result)["code"] == "config.invalid"


def test_records(tmp_path: Path) -> None:
    missing = invoke("records", "ingest", str(tmp_path / "absent.json"))
    assert missing.exit_code == 2 and json_error(missing)["code"] == "input.missing"
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    malformed = invoke("records", "ingest", str(junk))
    assert malformed.exit_code == 2 and json_error(malformed)["code"] == "input.malformed"
    down = invoke("records", "search", "x", "--proxy", "http://127.0.0.1:9")
    assert down.exit_code == 1 and json_error(down)["code"] == "client.upstream_failed"


def test_scribe(tmp_path: Path) -> None:
    result = invoke("scribe", str(tmp_path / "absent.wav"), "--proxy", "http://127.0.0.1:9")
    assert result.exit_code == 2 and json_error(result)["code"] == "input.missing"
    audio = tmp_path / "visit.wav"
    audio.write_bytes(b"RIFF")
    down = invoke("scribe", str(audio), "--proxy", "http://127.0.0.1:9")
    assert down.exit_code == 1 and json_error(down)["code"] == "client.upstream_failed"


def test_monitor(tmp_path: Path) -> None:
    result = invoke("monitor", "learn", "--events", str(tmp_path / "absent.jsonl"),
                    "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 2 and json_error(result)["code"] == "input.missing"


def test_fl(tmp_path: Path) -> None:
    result = invoke("fl", "challenge", str(tmp_path / "absent"), "--site", "site-a")
    assert result.exit_code == 1 and json_error(result)["code"] == "fl.site_unknown"


def test_release(tmp_path: Path) -> None:
    proof = tmp_path / "proof.json"
    proof.write_text("{not json")
    result = invoke("release", "verify", str(proof), "--log-key", "log.example/r+00000000+AA")
    assert result.exit_code == 2 and json_error(result)["code"] == "input.malformed"
    absent = invoke("release", "verify", str(tmp_path / "absent.json"), "--log-key", "k")
    assert absent.exit_code == 2 and json_error(absent)["code"] == "input.missing"


def test_kbs_revocation() -> None:
    down = invoke("kbs", "revocation", "list", "--url", "http://127.0.0.1:9",
                  "--token", "mkt1.vendor.x")
    assert down.exit_code == 1 and json_error(down)["code"] == "kbs.unavailable"
