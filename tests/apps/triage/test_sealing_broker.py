"""The sealing root through the real key broker on 127.0.0.1: released (signed, over fresh
evidence) only to the enclave build the tenant's policy names; a rotation keeps old
conversations readable and seals new ones under the new version; a retired version leaves
what it sealed unreadable. The enclave keeps no root on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medclave.apps.triage.app import TriageApp
from medclave.attestation.policy import AppraisalPolicy
from medclave.background import BackgroundServer
from medclave.client.conversations import new_share
from medclave.client.sdk import MedclaveClient
from medclave.enclave.app import create_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.sealing.roots import sealing_resource
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import MedclaveError
from medclave.kbs.app import create_app as create_kbs_app
from medclave.kbs.client import OwnerClient
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.store import Decision
from tests.apps.triage.conftest import sdk
from tests.e2e.helpers import (
    ISSUER,
    MEASUREMENT,
    TENANT,
    Enclave,
    FakeEngine,
    Idp,
    make_idp,
    sim_policy,
)
from tests.kbs.helpers import memory_broker, sim_roots

ROGUE = "a" * 96


@dataclass
class World:
    folder: Path
    kbs: str
    owner_token: str
    broker_key: str
    idp: Idp
    decisions: list[Decision]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("sealing-broker")
    settings, broker, decisions = memory_broker(folder, sim_roots(folder, "enclave", "rogue"))
    token = broker.issue_owner_token(TENANT)
    with BackgroundServer(create_kbs_app(settings, broker=broker)) as server:
        with OwnerClient(server.url, token) as hospital:
            hospital.put(sealing_resource(TENANT))  # 32 random bytes made by the broker
            hospital.set_policy(sealing_resource(TENANT), ReleasePolicy(
                appraisal=AppraisalPolicy.model_validate({
                    "name": "st-marys-sealing", "platforms": ["sim"],
                    "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}})))
        yield World(folder, server.url, token, broker.signer.public_key.hex(),
                    make_idp(folder), decisions)


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


def _boot(world: World, name: str, measurement: str, clock: Clock) -> Enclave:
    settings = EnclaveSettings(
        data_dir=world.folder / name, platform="sim", sim_measurement=measurement,
        kbs_url=world.kbs, kbs_keys=(world.broker_key,), audit_store="memory",
        commitment_key_file=_key(world.folder / f"{name}.ck"), auth_issuer=ISSUER,
        auth_jwks_file=world.idp.jwks, auth_tenants=(TENANT,), auth_roles=("patient",),
        triage=True)
    booted: Booted = boot(settings, clock=clock, engine_factory=lambda p, s: FakeEngine(),
                          apps=(TriageApp.from_context,))
    server = BackgroundServer(create_app(booted.service, settings)).start()
    return Enclave(booted, server, None, settings)


def _key(path: Path) -> Path:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode())
        os.close(fd)
    return path


def _releases(world: World) -> list[Decision]:
    return [d for d in world.decisions if d.resource == sealing_resource(TENANT)
            and d.action == "release"]


def test_released_to_the_approved_build_rotation_keeps_old_versions(world: World) -> None:
    clock = Clock()
    enclave = _boot(world, "enclave", MEASUREMENT, clock)
    share = new_share()

    def token() -> str:  # issued at the enclave's clock, which the test moves on
        return world.idp.issuer.issue(sub="pat-hal", tenant=TENANT, roles=["patient"],
                                      now=clock.at)
    try:
        with sdk(enclave, token) as client:
            old = client.conversations.create(share)
            client.conversations.send(share, old["id"], "the first week")
            assert old["root_version"] == 1
            with OwnerClient(world.kbs, world.owner_token) as hospital:
                assert hospital.rotate(sealing_resource(TENANT)) == 2
            clock.at += timedelta(minutes=6)  # past the enclave's cache of "current"
            new = client.conversations.create(share)
            assert new["root_version"] == 2
            client.conversations.send(share, old["id"], "after the rotation")
            assert [t["content"] for t in client.conversations.export(share, old["id"])[
                "turns"]][::2] == ["the first week", "after the rotation"]
            assert {c["id"] for c in client.conversations.list(share)} == {old["id"],
                                                                             new["id"]}
        assert {d.outcome for d in _releases(world)} == {"allowed"}
    finally:
        enclave.stop()

    # Version 1 retired: a fresh enclave can no longer open what it sealed; version 2 opens.
    with OwnerClient(world.kbs, world.owner_token) as hospital:
        hospital.retire(sealing_resource(TENANT), 1)
    clock = Clock()
    fresh = _boot(world, "enclave", MEASUREMENT, clock)
    try:
        with sdk(fresh, token) as client:
            with pytest.raises(MedclaveError) as refused:
                client.conversations.export(share, old["id"])
            assert refused.value.code == "sealing.root_unavailable"
            assert len(client.conversations.export(share, new["id"])["turns"]) == 0
    finally:
        fresh.stop()


def test_an_enclave_the_tenant_did_not_approve_gets_no_root(world: World) -> None:
    rogue = _boot(world, "rogue", ROGUE, Clock())
    before = len(_releases(world))
    try:
        # Even a client whose own policy would accept it gets nothing sealed.
        client = MedclaveClient(rogue.url, policy=sim_policy(measurement=ROGUE),
                                api_key=world.idp.token(roles=["patient"], sub="pat-ivy"),
                                sim_roots=[rogue.sim_root])
        with client, pytest.raises(MedclaveError) as refused:
            client.conversations.create(new_share())
        assert refused.value.code == "sealing.root_unavailable"
        refusals = _releases(world)[before:]
        assert [(d.outcome, d.code) for d in refusals] == [
            ("refused", "attestation.measurement_mismatch")]
    finally:
        rogue.stop()
