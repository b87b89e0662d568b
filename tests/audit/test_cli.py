"""``medclave audit``: each command through Typer's runner, with exit codes and JSON output."""

from __future__ import annotations

import json
import sqlite3
import sys
import types
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from medclave.audit.log import AuditLog
from medclave.audit.note import ALG_COSIGNATURE_V1, NoteSigner, NoteVerifier, verify_checkpoint
from medclave.audit.pgstore import PostgresLogStore
from medclave.audit.replay import ReplayEngine
from medclave.audit.store import log_name
from medclave.cli.audit import app
from tests.audit._builders import BUILD, MODEL, ORIGIN, TENANT_KEY, fake_engine, make_entry

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, log_signer: NoteSigner) -> Path:
    log = AuditLog.open_sqlite(tmp_path / "audit.sqlite3", origin=ORIGIN, signer=log_signer)
    log.append_batch([make_entry(i) for i in range(10)])
    log.append_batch([make_entry(i, break_glass=i == 12) for i in range(10, 25)])
    log.close()
    return tmp_path


def _json(out: str) -> dict[str, object]:
    return json.loads(out)  # type: ignore[no-any-return]


def test_verify_ok_then_tampered(data_dir: Path, log_signer: NoteSigner) -> None:
    db = data_dir / "audit.sqlite3"
    res = runner.invoke(app, ["verify", str(db), "--key", log_signer.verifier.vkey()])
    assert res.exit_code == 0, res.output
    body = _json(res.stdout)
    assert body["ok"] is True and body["size"] == 25 and body["checkpoints"] == 2

    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER entries_append_only_delete")
    con.execute("DELETE FROM entries WHERE idx = 11")
    con.commit()
    con.close()
    res = runner.invoke(app, ["verify", "--data", str(data_dir), "--key",
                              log_signer.verifier.vkey()])
    assert res.exit_code == 1
    first = _json(res.stdout)["findings"][0]  # type: ignore[index]
    assert first == {"code": "audit.entry_missing", "where": "entries 11..11",
                     "detail": "no such rows"}


def test_verify_needs_a_usable_key(data_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["verify", str(data_dir / "audit.sqlite3"), "--key", "nonsense"])
    assert res.exit_code == 2 and _json(res.stdout)["error"]["code"] == "crypto.bad_key"  # type: ignore[index]
    stranger = NoteSigner.generate(ORIGIN).verifier.vkey()
    keyfile = tmp_path / "log.vkey"
    keyfile.write_text(stranger + "\n")
    res = runner.invoke(app, ["verify", str(data_dir / "audit.sqlite3"), "--key", f"@{keyfile}"])
    assert res.exit_code == 1
    assert _json(res.stdout)["findings"][0]["code"] == "audit.checkpoint_signature_invalid"  # type: ignore[index]
    res = runner.invoke(app, ["verify", str(tmp_path / "none.db"), "--key", stranger])
    assert res.exit_code == 2


def test_prove_then_receipt_verify(data_dir: Path, log_signer: NoteSigner, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["prove", "12", "--data", str(data_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    vkey = log_signer.verifier.vkey()
    res = runner.invoke(app, ["receipt", "verify", str(out), "--key", vkey])
    assert res.exit_code == 0, res.output
    body = _json(res.stdout)
    assert body["index"] == 12 and body["tree_size"] == 25
    assert body["entry"]["break_glass"] is True  # type: ignore[index]

    doc = json.loads(out.read_bytes())
    doc["index"] = 13
    out.write_text(json.dumps(doc))
    res = runner.invoke(app, ["receipt", "verify", str(out), "--key", vkey])
    assert res.exit_code == 1
    assert _json(res.stdout)["error"]["code"] == "audit.inclusion_invalid"  # type: ignore[index]
    res = runner.invoke(app, ["prove", "99", "--data", str(data_dir)])
    assert res.exit_code == 2


def test_replay_with_a_plugged_engine(
    data_dir: Path, log_signer: NoteSigner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("medclave_test_engine")
    module.replay_engine = ReplayEngine(fake_engine, MODEL, BUILD)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medclave_test_engine", module)
    (tmp_path / "tenant.key").write_bytes(TENANT_KEY)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Summarise the chart of patient 7")
    args = ["replay", "7", "--prompt", str(prompt), "--tenant-key", str(tmp_path / "tenant.key"),
            "--key", log_signer.verifier.vkey(), "--engine", "medclave_test_engine:replay_engine",
            "--data", str(data_dir)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["answer_commitment"] == make_entry(7).answer

    prompt.write_text("Summarise the chart of patient 8")
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert _json(res.stdout)["error"]["code"] == "audit.commitment_mismatch"  # type: ignore[index]

    res = runner.invoke(app, [*args[:-4], "--engine", "no_such_module:x", "--data", str(data_dir)])
    assert res.exit_code == 2
    assert _json(res.stdout)["error"]["code"] == "enclave.not_ready"  # type: ignore[index]


def test_export_fhir(data_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", "--fhir", "--data", str(data_dir), "--start", "10",
                              "--stop", "13"])
    assert res.exit_code == 0, res.output
    bundle = _json(res.stdout)
    assert bundle["resourceType"] == "Bundle"
    events = [e["resource"] for e in bundle["entry"]]  # type: ignore[attr-defined]
    assert len(events) == 3
    assert [e["purposeOfEvent"][0]["coding"][0]["code"] for e in events if "purposeOfEvent" in e
            ] == ["BTG"]
    res = runner.invoke(app, ["export", "--data", str(data_dir)])
    assert res.exit_code == 2


def test_witness_and_keygen(data_dir: Path, log_signer: NoteSigner, tmp_path: Path) -> None:
    wkey = tmp_path / "w.key"
    res = runner.invoke(app, ["keygen", "witness.example/w9", "--cosigner", "--out", str(wkey)])
    assert res.exit_code == 0, res.output
    witness_vkey = _json(res.stdout)["vkey"]
    assert wkey.stat().st_mode & 0o777 == 0o600
    assert runner.invoke(app, ["keygen", "x", "--out", str(wkey)]).exit_code == 2

    db = data_dir / "audit.sqlite3"
    con = sqlite3.connect(db)
    notes = {s: bytes(n) for s, n in con.execute("SELECT size, note FROM checkpoints")}
    con.close()
    state = tmp_path / "state.json"
    first, second = tmp_path / "cp10", tmp_path / "cp25"
    first.write_bytes(notes[10])
    second.write_bytes(notes[25])
    common = ["--log-key", log_signer.verifier.vkey(), "--witness-key", str(wkey),
              "--state", str(state)]
    res = runner.invoke(app, ["witness", "--checkpoint", str(first), *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["witness", "--checkpoint", str(second), *common])
    assert res.exit_code == 1  # no consistency proof from 10
    res = runner.invoke(app, ["witness", "--checkpoint", str(second), *common,
                              "--from-log", str(db)])
    assert res.exit_code == 0, res.output
    w = NoteVerifier.from_vkey(str(witness_vkey))
    assert w.alg == ALG_COSIGNATURE_V1
    got = verify_checkpoint(res.stdout.encode(), log_signer.verifier, witnesses=[w], quorum=1)
    assert got.checkpoint.size == 25


def test_verify_a_log_in_postgresql(pg_url: str, log_signer: NoteSigner) -> None:
    """An auditor with read access to the enclaves' database: the log is found by the key."""
    store = PostgresLogStore(pg_url, log=log_name(ORIGIN, log_signer.verifier.vkey()))
    log = AuditLog(store, origin=ORIGIN, signer=log_signer)
    log.append_batch([make_entry(i) for i in range(10)])
    log.close()
    args = ["verify", "--store", pg_url, "--key", log_signer.verifier.vkey()]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["size"] == 10
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the twin: one byte changed
        conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER USER")
        conn.execute("UPDATE audit_entries SET data = set_byte(data, 40, get_byte(data, 40) # 1) "
                     "WHERE idx = 4")
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert _json(res.stdout)["findings"][0]["where"] == "entry 4"  # type: ignore[index]
    stranger = NoteSigner.generate(ORIGIN).verifier.vkey()  # another key: no such log
    res = runner.invoke(app, ["verify", "--store", pg_url, "--key", stranger])
    assert res.exit_code != 0 and "audit.entry_missing" in res.output
