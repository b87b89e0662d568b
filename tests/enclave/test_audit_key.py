"""The audit key released by the key broker to the measured enclave (a real broker and enclave
on 127.0.0.1, sim): the log continues across restarts under one key, so a checkpoint from a
receipt of the first boot still proves the log after the second; a rollback between boots is
refused at boot (torn) or by the auditor (whole)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from medclave.attestation.policy import AppraisalPolicy
from medclave.audit.note import ALG_ED25519, NoteVerifier
from medclave.audit.receipt import VerifiedReceipt
from medclave.background import BackgroundServer
from medclave.cli.audit import app as audit_cli
from medclave.client.session import EnclaveSession
from medclave.enclave import boot as boot_module
from medclave.enclave.attester import HostPlatform
from medclave.enclave.boot import boot
from medclave.enclave.hooks import InsecureNoAuthorization
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import MedclaveError
from medclave.kbs.app import create_app as create_kbs_app
from medclave.kbs.client import OwnerClient
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.store import Decision
from medclave.protocol import inference as proto
from tests.audit._builders import truncate_log
from tests.e2e.helpers import MEASUREMENT, Enclave, FakeEngine, sim_policy, start_enclave
from tests.kbs.helpers import memory_broker, sim_roots

OPS = "medclave-ops"
RESOURCE = f"kbs:///{OPS}/audit-key/enclave-1"
ORIGIN = "medclave.example/enclave-1"
OTHER_MEASUREMENT = "ab" * 48
runner = CliRunner()


@dataclass
class World:
    folder: Path
    kbs: str
    seed: bytes
    decisions: list[Decision]
    broker_key: str  # what `medclave kbs key show` hands the enclave's operator

    def releases(self) -> list[tuple[str, str | None]]:
        return [(d.outcome, d.code) for d in self.decisions
                if d.action == "release" and d.resource == RESOURCE]

    @property
    def vkey(self) -> str:
        """What the auditor expects, computed from the seed with the library directly."""
        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()
        return NoteVerifier(ORIGIN, public, ALG_ED25519).vkey()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A broker holding the operator's audit-key seed, released only to MEASUREMENT on sim."""
    settings, broker, decisions = memory_broker(tmp_path, sim_roots(tmp_path, "enclave"))
    seed = os.urandom(32)
    with BackgroundServer(create_kbs_app(settings, broker=broker)) as server:
        with OwnerClient(server.url, broker.issue_owner_token(OPS)) as owner:
            owner.put(RESOURCE, seed)
            owner.set_policy(RESOURCE, ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
                "name": "audit-key", "platforms": ["sim"],
                "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}})))
        yield World(tmp_path, server.url, seed, decisions, broker.signer.public_key.hex())


def _start(world: World, *, measurement: str = MEASUREMENT, **overrides: Any) -> Enclave:
    base: dict[str, Any] = {"audit_store": "sqlite", "kbs_url": world.kbs,
                            "kbs_keys": (world.broker_key,),
                            "audit_key_resource": RESOURCE, "audit_origin": ORIGIN}
    base.update(overrides)
    return start_enclave(world.folder / "enclave", None, engine=FakeEngine(),
                         measurement=measurement, **base)


def _ask(enclave: Enclave) -> VerifiedReceipt:
    """One inference through the SDK; the receipt it verified with the attested audit key."""
    with EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root})
                        ) as session:
        response = session.request("POST", proto.CHAT_PATH, body=json.dumps({
            "messages": [{"role": "user", "content": "INR 4.2 on warfarin?"}],
            "max_tokens": 8}).encode())
    assert response.status == 200 and response.receipt is not None
    return response.receipt


def _log_file(world: World) -> Path:
    (path,) = (world.folder / "enclave" / "audit").glob("*.sqlite3")
    return path


def _audit_verify(world: World, *checkpoints: Path) -> tuple[int, dict[str, Any]]:
    args = ["verify", str(_log_file(world)), "--key", world.vkey, "--json"]
    for cp in checkpoints:
        args += ["--checkpoint", str(cp)]
    res = runner.invoke(audit_cli, args)
    return res.exit_code, json.loads(res.stdout)


def _keep(world: World, name: str, receipt: VerifiedReceipt) -> Path:
    path = world.folder / name
    path.write_bytes(receipt.receipt.to_json())
    return path


def test_one_log_under_one_key_across_two_boots(world: World) -> None:
    first = _start(world)
    try:
        assert first.booted.service.runtime()["audit_public_key"]
        receipts = [_ask(first), _ask(first)]
    finally:
        first.stop()
    kept = _keep(world, "boot1-receipt.json", receipts[-1])

    second = _start(world)
    try:
        later = _ask(second)
        runtime = second.booted.service.runtime()
    finally:
        second.stop()
    # The key the second enclave attests is the first's: the one the seed gives.
    assert NoteVerifier(ORIGIN, second.booted.service.identity.audit_public_key).vkey() == \
        world.vkey
    assert runtime["audit_origin"] == ORIGIN
    assert [r.index for r in receipts] == [0, 1] and later.index == 2
    assert (receipts[-1].checkpoint.size, later.checkpoint.size) == (2, 3)
    assert world.releases() == [("allowed", None), ("allowed", None)]

    code, body = _audit_verify(world, kept, _keep(world, "boot2-receipt.json", later))
    assert (code, body["ok"], body["size"], body["checkpoints"]) == (0, True, 3, 3), body
    assert body["trusted_checkpoints"] == [2, 3]


def test_a_rollback_between_boots(world: World) -> None:
    first = _start(world)
    try:
        receipts = [_ask(first) for _ in range(3)]
    finally:
        first.stop()
    kept = _keep(world, "receipt.json", receipts[-1])
    log_file = _log_file(world)

    # Torn: entries removed under the checkpoints that signed them. The enclave will not
    # extend such a log.
    saved = log_file.read_bytes()
    db = sqlite3.connect(log_file)
    db.execute("DROP TRIGGER entries_append_only_delete")
    db.execute("DELETE FROM entries WHERE idx >= 1")
    db.commit()
    db.close()
    with pytest.raises(MedclaveError) as err:
        _start(world)
    assert err.value.code == "audit.log_inconsistent"
    assert err.value.context["cause"] == "audit.rollback"

    # Whole: truncated with its checkpoints and nodes. The enclave cannot tell and boots; the
    # auditor holding a receipt of the first boot refuses the log.
    log_file.write_bytes(saved)
    truncate_log(log_file, 1)
    second = _start(world)
    try:
        # History rewritten from entry 1 on, and grown past what the auditor saw.
        assert [_ask(second).index for _ in range(3)] == [1, 2, 3]
    finally:
        second.stop()
    assert _audit_verify(world)[0] == 0  # on its own the log verifies...
    code, body = _audit_verify(world, kept)  # ...not against what the auditor kept
    assert code == 1 and body["findings"][0]["code"] == "audit.consistency_invalid"
    truncate_log(log_file, 1)
    code, body = _audit_verify(world, kept)
    assert code == 1 and body["findings"][0]["code"] == "audit.rollback"


def test_an_enclave_the_policy_does_not_name_gets_no_audit_key(world: World) -> None:
    with pytest.raises(MedclaveError) as err:
        _start(world, measurement=OTHER_MEASUREMENT)
    assert err.value.code == "attestation.measurement_mismatch"
    assert world.releases() == [("refused", "attestation.measurement_mismatch")]
    assert not (world.folder / "enclave" / "audit").exists()  # refused before any log


def test_the_release_binds_the_boot_runtime_without_the_audit_key(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chicken-and-egg: the evidence for the audit key cannot name it; every later one
    does."""
    seen: list[dict[str, Any]] = []
    real = boot_module.select_platform

    def spying(*args: Any, **kw: Any) -> HostPlatform:
        platform = real(*args, **kw)
        inner = platform.attester

        def attest(nonce: bytes, runtime: dict[str, Any]) -> Any:
            seen.append(dict(runtime))
            return inner(nonce, runtime)

        return HostPlatform(platform.name, attest, platform.secure, platform.sim_root)

    monkeypatch.setattr(boot_module, "select_platform", spying)
    enclave = _start(world)
    enclave.stop()
    assert "audit_public_key" not in seen[0] and seen[0]["audit_origin"] == ORIGIN
    assert "ephemeral_key" in seen[0]  # it was the release
    assert all("audit_public_key" in r for r in seen[1:]) and len(seen) > 1


def test_configuration(world: World, caplog: pytest.LogCaptureFixture) -> None:
    for missing in ({"kbs_url": None}, {"audit_origin": None}):
        with pytest.raises(MedclaveError) as err:
            _start(world, **missing)
        assert err.value.code == "config.invalid"
    # Without a released key: a key per boot, hence a log per boot, and a warning saying so.
    with caplog.at_level(logging.WARNING, logger="medclave.enclave"):
        for _ in range(2):
            _start(world, audit_key_resource=None).stop()
    assert sum("does not continue across restarts" in r.getMessage()
               for r in caplog.records) == 2
    assert len(list((world.folder / "enclave" / "audit").glob("*.sqlite3"))) == 2
    assert world.releases() == []


def test_a_tee_with_a_broker_must_have_the_audit_key_from_it(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a secure platform a key made at boot is refused when a broker is configured."""
    def secure(*args: Any, **kw: Any) -> HostPlatform:
        raise AssertionError("the platform's attester must not be reached")

    monkeypatch.setattr(boot_module, "select_platform",
                        lambda *a, **k: HostPlatform("sevsnp", secure, True))
    settings = EnclaveSettings(data_dir=world.folder / "tee", kbs_url=world.kbs,
                               kbs_keys=(world.broker_key,), audit_store="memory")
    with pytest.raises(MedclaveError) as err:
        boot(settings, engine_factory=lambda p, s: FakeEngine(),
             authorization=InsecureNoAuthorization())
    assert err.value.code == "config.invalid" and "audit_key_resource" in err.value.detail
