"""The tenant's records data key comes from the key broker (kbs:///TENANT/data-key/records),
released only to the enclave its policy approves; the sealed store reopens across a reboot, and
an enclave the hospital did not approve gets no key and does not boot on its store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medclave.attestation.policy import AppraisalPolicy
from medclave.audit import generate_commitment_key
from medclave.background import BackgroundServer
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app as create_enclave_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.commitkeys import commitment_resource
from medclave.enclave.model import DEFAULT_MODEL_SHA256
from medclave.enclave.records_boot import data_key_resource
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import RecordsError
from medclave.kbs.app import create_app as create_kbs_app
from medclave.kbs.client import OwnerClient
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.store import Decision
from medclave.protocol import inference as proto
from tests.e2e.helpers import ISSUER, MEASUREMENT, TENANT, FakeEngine, Idp, make_idp, sim_policy
from tests.kbs.helpers import memory_broker, sim_roots

OTHER_MEASUREMENT = hashlib.sha384(b"an enclave build the hospital never approved").hexdigest()
PATIENT = "Patient/dk-p1"
BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "Patient", "id": "dk-p1", "gender": "male",
                  "birthDate": "1970-01-01"}},
    {"resource": {"resourceType": "Observation", "id": "dk-o1", "status": "final",
                  "code": {"text": "Serum potassium"}, "subject": {"reference": PATIENT},
                  "effectiveDateTime": "2024-05-01",
                  "valueQuantity": {"value": 5.9, "unit": "mmol/L"}}}]}


@dataclass
class World:
    folder: Path
    kbs: str
    idp: Idp
    decisions: list[Decision]
    broker_key: str

    def releases(self) -> list[Decision]:
        return [d for d in self.decisions
                if d.action == "release" and d.resource == data_key_resource(TENANT)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("datakeys")
    settings, broker, decisions = memory_broker(folder, sim_roots(folder, "good", "rogue"))
    policy = ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
        "name": "st-marys-records", "platforms": ["sim"],
        "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}}),
        model_digests=(DEFAULT_MODEL_SHA256,))
    with BackgroundServer(create_kbs_app(settings, broker=broker)) as server:
        with OwnerClient(server.url, broker.issue_owner_token(TENANT)) as hospital:
            for resource, secret in ((commitment_resource(TENANT), generate_commitment_key()),
                                     # Raw bytes, a whitespace byte at each end: nothing may
                                     # strip them (a commitment key's parsing would).
                                     (data_key_resource(TENANT),
                                      b" " + os.urandom(30) + b"\n")):
                hospital.put(resource, secret)
                hospital.set_policy(resource, policy)
        yield World(folder, server.url, make_idp(folder), decisions,
                    broker.signer.public_key.hex())


def _boot(world: World, folder: Path, measurement: str) -> Booted:
    users = world.folder / "users.json"
    users.write_text(json.dumps({"pt-1": PATIENT}))
    settings = EnclaveSettings(
        data_dir=folder, platform="sim", sim_measurement=measurement, kbs_url=world.kbs,
        kbs_keys=(world.broker_key,), audit_store="memory", auth_issuer=ISSUER,
        auth_jwks_file=world.idp.jwks, auth_tenants=(TENANT,), records_enabled=True,
        records_users_file=users, auth_roles=("clinician", "patient"))
    return boot(settings, engine_factory=lambda p, s: FakeEngine())


def _call(booted: Booted, path: str, body: Any, token: str) -> tuple[int, Any]:
    root = booted.platform.sim_root
    assert root is not None
    with BackgroundServer(create_enclave_app(booted.service)) as server, \
            EnclaveSession(server.url, sim_policy(), sim_roots=frozenset({root})) as session:
        answer = session.request("POST", path, body=json.dumps(body).encode(),
                                 authorization=f"Bearer {token}")
    return answer.status, json.loads(answer.body)


def test_the_data_key_is_released_only_to_the_approved_enclave_and_survives_a_reboot(
        world: World) -> None:
    folder = world.folder / "good"
    booted = _boot(world, folder, MEASUREMENT)
    try:
        status, body = _call(booted, proto.RECORDS_PATH, BUNDLE,
                             world.idp.token(sub="loader", roles=("admin",)))
        assert (status, body) == (200, {"ingested": {"resources": 2, "chunks": 2, "skipped": 0}})
    finally:
        booted.close()
    assert [d.outcome for d in world.releases()] == ["allowed"]
    sealed = (folder / "records" / "records.sqlite3").read_bytes()
    assert b"potassium" not in sealed and b"dk-o1" not in sealed
    again = _boot(world, folder, MEASUREMENT)  # the index rebuilt from the sealed store
    try:
        status, body = _call(again, proto.SEARCH_PATH, {"query": "potassium", "patient": PATIENT,
                                                       "k": 1},
                             world.idp.token(sub="pt-1", roles=("patient",)))
        assert status == 200
        assert [r["reference"] for r in body["results"]] == ["Observation/dk-o1"]
        assert body["results"][0]["why"]["reason"] == "self"
    finally:
        again.close()
    assert [d.outcome for d in world.releases()] == ["allowed", "allowed"]
    # An enclave the hospital did not approve, given a copy of the store: no key, no boot.
    rogue = world.folder / "rogue"
    shutil.copytree(folder / "records", rogue / "records", dirs_exist_ok=True)
    before = len(world.releases())
    with pytest.raises(RecordsError) as err:
        _boot(world, rogue, OTHER_MEASUREMENT)
    assert err.value.code == "records.key_unavailable"
    assert [d.outcome for d in world.releases()[before:]] == ["refused"]
