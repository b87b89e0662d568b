"""KEK rotation (issue 16, runbook "KEK backup and rotation"): ``medclave kbs kek rotate``
re-wraps every stored secret version under a new KEK in one transaction, records it in the
decision log, and swaps the key file only after the commit. The failure cases leave the store
byte for byte as it was and the old KEK opening everything: a wrong old KEK, a tampered row, a
process killed in the middle of the transaction; a kill after the commit but before the key
file is swapped is refused at the broker's start and finished by running the command again."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.attestation import sim
from medclave.background import BackgroundServer
from medclave.cli import kbs as kbs_cli
from medclave.errors import CryptoError, InputError, KbsError
from medclave.kbs.app import create_app
from medclave.kbs.client import KbsClient
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek, FileKek
from medclave.kbs.names import ResourceName
from medclave.kbs.rekey import rotate_configured_kek, rotate_kek
from medclave.kbs.service import KeyBroker, wrap_aad
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import BrokerSigner
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import Decision, MemoryKbsStore
from tests.kbs.helpers import sim_attester, sim_policy, trusting

runner = CliRunner()
NAMES = ("kbs:///vendor/model-key/llama", "kbs:///vendor/audit-key/log",
         "kbs:///st-marys/commitment-key/t1")


def secrets_of(index: int, version: int) -> bytes:
    return bytes([index * 16 + version]) * 32


def make_broker_folder(tmp_path: Path) -> tuple[KbsSettings, dict[tuple[str, int], bytes]]:
    """A stopped broker's folder: a file KEK and three resources, one rotated (4 versions)."""
    settings = KbsSettings(data_dir=tmp_path / "kbs")
    settings.data_dir.mkdir(mode=0o700)
    store = SqliteKbsStore(settings.db_path)
    broker = KeyBroker(store, FileKek.create(settings.kek_path), signer=BrokerSigner.generate())
    expected: dict[tuple[str, int], bytes] = {}
    for i, name in enumerate(NAMES):
        owner = ResourceName.parse(name).owner
        broker.create_resource(owner, name, secrets_of(i, 1), client_id="setup")
        expected[(name, 1)] = secrets_of(i, 1)
    broker.rotate_resource("vendor", NAMES[0], secrets_of(0, 2), client_id="setup")
    expected[(NAMES[0], 2)] = secrets_of(0, 2)
    store.close()
    return settings, expected


def opened(settings: KbsSettings, kek: AesGcmKek) -> dict[tuple[str, int], bytes]:
    store = SqliteKbsStore(settings.db_path)
    try:
        out = {}
        for name in NAMES:
            resource = ResourceName.parse(name)
            info = store.resource_info(resource)
            assert info is not None
            for version in info.versions:
                wrapped = store.secret_version(resource, version).wrapped
                out[(name, version)] = kek.unwrap(wrapped, wrap_aad(resource, version))
        return out
    finally:
        store.close()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def cli(*args: str, code: int = 0, env: dict[str, str] | None = None) -> Any:
    import json
    result = runner.invoke(kbs_cli.app, list(args), env=env)
    assert result.exit_code == code, (result.output, result.exception)
    return json.loads(result.stdout)


def test_rotation_rewraps_every_version_swaps_the_file_and_is_logged(tmp_path: Path) -> None:
    settings, expected = make_broker_folder(tmp_path)
    old = FileKek.load(settings.kek_path)
    old_text = settings.kek_path.read_bytes()
    out = cli("kek", "rotate", "--data", str(settings.data_dir))
    assert out["secret_versions"] == 4 and out["resumed"] is False
    assert out["old_kek_id"] == old.key_id and out["new_kek_id"] != old.key_id
    assert settings.kek_path.read_bytes() != old_text
    assert oct(settings.kek_path.stat().st_mode & 0o777) == "0o600"
    assert not (settings.data_dir / "kek.key.new").exists()
    new = FileKek.load(settings.kek_path)
    assert new.key_id == out["new_kek_id"]
    assert opened(settings, new) == expected
    with pytest.raises(InputError):  # the old KEK opens nothing any more
        opened(settings, old)
    shown = cli("kek", "show", "--data", str(settings.data_dir))
    assert shown["kek_id"] == shown["store_kek_id"] == new.key_id
    assert len(shown["rotations"]) == 1 and new.key_id in shown["rotations"][0]["detail"]
    store = SqliteKbsStore(settings.db_path)
    try:
        logged = [d for d in store.decisions() if d.action == "kek_rotate"]
    finally:
        store.close()
    assert len(logged) == 1 and logged[0].outcome == "allowed"
    assert old.key_id in logged[0].detail and new.key_id in logged[0].detail
    assert "4 secret versions" in logged[0].detail


def test_keys_still_release_after_rotation(tmp_path: Path) -> None:
    settings, expected = make_broker_folder(tmp_path)
    cli("kek", "rotate", "--data", str(settings.data_dir))
    authority = sim.SimAuthority.load_or_create(tmp_path / "sim")
    live = settings.model_copy(update={"sim_roots": (authority.root_fingerprint,)})
    broker = build_broker(live)
    try:
        broker.store.put_policy(ResourceName.parse(NAMES[0]), sim_policy().to_json(),
                                sim_policy().digest(), datetime.now(UTC))
        with BackgroundServer(create_app(live, broker=broker)) as server, \
                KbsClient(server.url, sim_attester(authority), trusted=trusting(broker),
                          runtime={}) as client:
            assert client.fetch(NAMES[0]) == expected[(NAMES[0], 2)]
    finally:
        broker.store.close()


def test_a_wrong_old_kek_leaves_the_store_untouched(tmp_path: Path) -> None:
    settings, expected = make_broker_folder(tmp_path)
    before = snapshot(settings.data_dir)
    wrong = base64.b64encode(os.urandom(32)).decode()
    out = cli("kek", "rotate", "--data", str(settings.data_dir), code=2,
              env={"MEDCLAVE_KBS_KEK": wrong})
    assert out["error"]["code"] == "config.invalid"
    assert snapshot(settings.data_dir) == before  # no pending key left, no row changed
    assert opened(settings, FileKek.load(settings.kek_path)) == expected


def test_a_tampered_row_stops_the_rotation_before_anything_changes(tmp_path: Path) -> None:
    settings, expected = make_broker_folder(tmp_path)
    import sqlite3
    with sqlite3.connect(settings.db_path) as db:
        (wrapped,) = db.execute("SELECT wrapped FROM secret_versions WHERE name=? AND "
                                "version=1", (NAMES[2],)).fetchone()
        flipped = bytes(wrapped[:-1]) + bytes([wrapped[-1] ^ 1])
        db.execute("UPDATE secret_versions SET wrapped=? WHERE name=? AND version=1",
                   (flipped, NAMES[2]))
    db.close()
    before = snapshot(settings.data_dir)
    with pytest.raises(CryptoError) as refused:
        rotate_configured_kek(settings, new_kek_file=None, now=datetime.now(UTC))
    assert refused.value.code == "crypto.decrypt_failed"
    assert snapshot(settings.data_dir) == before
    old = FileKek.load(settings.kek_path)
    store = SqliteKbsStore(settings.db_path)
    try:  # the untampered rows still open under the old KEK
        for (name, version), value in expected.items():
            if name != NAMES[2]:
                resource = ResourceName.parse(name)
                assert old.unwrap(store.secret_version(resource, version).wrapped,
                                  wrap_aad(resource, version)) == value
        assert store.kek_id() is None
    finally:
        store.close()


CRASH = textwrap.dedent("""
    import os, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from medclave.kbs.rekey import rotate_configured_kek, rotate_kek
    from medclave.kbs.settings import KbsSettings

    class Dies:
        # Wraps like the new KEK, and the process dies at the third secret: mid-transaction.
        def __init__(self, inner):
            self.inner, self.calls = inner, 0
        @property
        def key_id(self):
            return self.inner.key_id
        def wrap(self, plaintext, aad):
            self.calls += 1
            if self.calls == 3:
                os._exit(9)
            return self.inner.wrap(plaintext, aad)
        def unwrap(self, wrapped, aad):
            return self.inner.unwrap(wrapped, aad)

    def crashing(store, old, new, **kw):
        return rotate_kek(store, old, Dies(new), **kw)

    rotate_configured_kek(KbsSettings(data_dir=Path(sys.argv[1])), new_kek_file=None,
                          now=datetime.now(UTC), rotate=crashing)
""")


def test_a_kill_mid_transaction_keeps_the_old_kek_and_a_rerun_finishes(tmp_path: Path
                                                                        ) -> None:
    settings, expected = make_broker_folder(tmp_path)
    old_text = settings.kek_path.read_bytes()
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    died = subprocess.run([sys.executable, str(script), str(settings.data_dir)], env=env,
                          capture_output=True, timeout=120)
    assert died.returncode == 9, died.stderr[-2000:]
    pending = settings.data_dir / "kek.key.new"
    assert pending.exists()  # the fresh key, never committed
    assert settings.kek_path.read_bytes() == old_text
    assert opened(settings, FileKek.load(settings.kek_path)) == expected
    store = SqliteKbsStore(settings.db_path)
    try:
        assert store.kek_id() is None
        assert not [d for d in store.decisions() if d.action == "kek_rotate"]
    finally:
        store.close()
    build_broker(settings).store.close()  # the old KEK still starts the broker
    pending_id = FileKek.load(pending).key_id
    out = cli("kek", "rotate", "--data", str(settings.data_dir))
    assert out["new_kek_id"] == pending_id and out["secret_versions"] == 4
    assert opened(settings, FileKek.load(settings.kek_path)) == expected


def test_a_kill_after_the_commit_is_refused_at_start_and_finished_by_a_rerun(tmp_path: Path
                                                                            ) -> None:
    settings, expected = make_broker_folder(tmp_path)
    old = FileKek.load(settings.kek_path)
    new = FileKek.create(settings.data_dir / "kek.key.new")
    store = SqliteKbsStore(settings.db_path)
    try:  # the transaction commits; the process dies before the key file is swapped
        rotate_kek(store, old, new, now=datetime.now(UTC))
    finally:
        store.close()
    with pytest.raises(InputError) as refused:
        build_broker(settings)
    assert refused.value.code == "config.invalid" and "kek rotate" in str(refused.value)
    out = cli("kek", "rotate", "--data", str(settings.data_dir))
    assert out["resumed"] is True and out["new_kek_id"] == new.key_id
    assert FileKek.load(settings.kek_path).key_id == new.key_id
    assert opened(settings, new) == expected
    build_broker(settings).store.close()


def test_a_kek_from_the_secret_store_leaves_the_swap_to_the_operator(tmp_path: Path) -> None:
    settings, expected = make_broker_folder(tmp_path)
    old_b64 = settings.kek_path.read_text().strip()
    settings.kek_path.unlink()  # only the secret store holds it
    new_file = tmp_path / "new.key"
    FileKek.create(new_file)
    env = {"MEDCLAVE_KBS_KEK": old_b64}
    out = cli("kek", "rotate", "--data", str(settings.data_dir), "--new-kek-file",
              str(new_file), env=env)
    assert out["new_kek_file"] == str(new_file) and "MEDCLAVE_KBS_KEK" in out["next"]
    assert not settings.kek_path.exists()
    assert opened(settings, FileKek.load(new_file)) == expected
    # The broker with the old secret-store KEK is refused at start until the store is updated.
    same_env = cli("kek", "show", "--data", str(settings.data_dir), env=env)
    assert same_env["kek_id"] != same_env["store_kek_id"]


def test_the_new_kek_must_differ_from_the_old(tmp_path: Path) -> None:
    settings, _ = make_broker_folder(tmp_path)
    before = snapshot(settings.data_dir)
    out = cli("kek", "rotate", "--data", str(settings.data_dir), "--new-kek-file",
              str(settings.kek_path), code=2)
    assert out["error"]["code"] == "config.invalid"
    assert snapshot(settings.data_dir) == before


def test_the_memory_store_rewraps_all_or_nothing() -> None:
    store = MemoryKbsStore()
    old, new = AesGcmKek(os.urandom(32)), AesGcmKek(os.urandom(32))
    broker = KeyBroker(store, old, signer=BrokerSigner.generate())
    for i, name in enumerate(NAMES):
        broker.create_resource(ResourceName.parse(name).owner, name, secrets_of(i, 1),
                               client_id="setup")
    before = {n: store.secret_version(ResourceName.parse(n)).wrapped for n in NAMES}
    calls = 0

    def fails_late(name: str, version: int, wrapped: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == len(NAMES):
            raise CryptoError("crypto.decrypt_failed", "injected")
        return b"x"

    decision = Decision(at=datetime.now(UTC), action="kek_rotate", resource="kek",
                        outcome="allowed", client="local")
    with pytest.raises(CryptoError):
        store.rewrap_secrets(fails_late, kek_id=new.key_id, decision=decision)
    assert {n: store.secret_version(ResourceName.parse(n)).wrapped for n in NAMES} == before
    assert store.kek_id() is None
    assert not [d for d in store.decisions() if d.action == "kek_rotate"]
    assert rotate_kek(store, old, new, now=datetime.now(UTC)).secret_versions == len(NAMES)
    for i, name in enumerate(NAMES):
        resource = ResourceName.parse(name)
        assert new.unwrap(store.secret_version(resource).wrapped,
                          wrap_aad(resource, 1)) == secrets_of(i, 1)


def test_rotation_is_refused_beside_a_running_broker_and_a_broker_waits_for_it(
        tmp_path: Path) -> None:
    settings, expected = make_broker_folder(tmp_path)
    running = build_broker(settings)  # holds the store open, the old KEK in memory
    try:
        before = snapshot(settings.data_dir)
        out = cli("kek", "rotate", "--data", str(settings.data_dir), code=1)
        assert out["error"]["code"] == "kbs.unavailable"
        assert snapshot(settings.data_dir) == before
    finally:
        running.store.close()
    rotating = SqliteKbsStore(settings.db_path, exclusive=True)  # as the rotation holds it
    try:
        with pytest.raises(KbsError) as refused:
            build_broker(settings)
        assert refused.value.code == "kbs.unavailable"
    finally:
        rotating.close()
    cli("kek", "rotate", "--data", str(settings.data_dir))
    assert opened(settings, FileKek.load(settings.kek_path)) == expected
