"""Tenant commitment keys from the key broker (a real broker and enclave on 127.0.0.1): released
only to an enclave the tenant's policy accepts, cached, refusals remembered for a while."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from medclave.attestation.policy import AppraisalPolicy
from medclave.audit import generate_commitment_key, open_commitment, parse_entry
from medclave.background import BackgroundServer
from medclave.client.session import EnclaveSession
from medclave.crypto import hpke
from medclave.enclave.app import create_app as create_enclave_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.commitkeys import BrokerCommitKeys, CommitKey, commitment_resource
from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.model import DEFAULT_MODEL_SHA256
from medclave.enclave.openai_api import commitment_input
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import InputError, KbsError, MedclaveError
from medclave.kbs.app import create_app as create_kbs_app
from medclave.kbs.client import OwnerClient
from medclave.kbs.models import RELEASE_INFO, ReleasePolicy, release_aad
from medclave.kbs.store import Decision
from medclave.protocol import inference as proto
from tests.e2e.helpers import (
    FAKE_ANSWER,
    ISSUER,
    MEASUREMENT,
    TENANT,
    FakeEngine,
    Idp,
    make_idp,
    now,
    sim_policy,
)
from tests.kbs.helpers import memory_broker, sim_roots

OTHER_MEASUREMENT = hashlib.sha384(b"an enclave build the hospital never approved").hexdigest()
KEYLESS = "keyless-clinic"  # served, but never registered a key
QUESTION = "Patient Clarissa D., 61, INR 4.2 on warfarin: hold tonight's dose?"


@dataclass
class World:
    folder: Path
    kbs: str
    idp: Idp
    tenant_key: bytes
    decisions: list[Decision]
    broker_key: str

    def releases(self, tenant: str) -> list[Decision]:
        name = commitment_resource(tenant)
        return [d for d in self.decisions if d.action == "release" and d.resource == name]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("commitkeys")
    settings, broker, decisions = memory_broker(folder, sim_roots(folder, "good", "rogue"))
    tenant_key = generate_commitment_key()
    with BackgroundServer(create_kbs_app(settings, broker=broker)) as server:
        # The hospital registers its key, released to the approved build running the model
        # it approved: its own policy, not the vendor's.
        with OwnerClient(server.url, broker.issue_owner_token(TENANT)) as hospital:
            hospital.put(commitment_resource(TENANT), tenant_key)
            hospital.set_policy(commitment_resource(TENANT), ReleasePolicy(
                appraisal=AppraisalPolicy.model_validate({
                    "name": "st-marys-audit-key", "platforms": ["sim"],
                    "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}}),
                model_digests=(DEFAULT_MODEL_SHA256,)))
        yield World(folder, server.url, make_idp(folder), tenant_key, decisions,
                    broker.signer.public_key.hex())


class _Clock:
    def __init__(self) -> None:
        self.at = now()

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> _Clock:
    return _Clock()


def _boot(world: World, name: str, measurement: str, clock: _Clock, spy: FakeEngine,
          *, kbs: str | None = None) -> Booted:
    settings = EnclaveSettings(
        data_dir=world.folder / name, platform="sim", sim_measurement=measurement,
        kbs_url=kbs or world.kbs, kbs_keys=(world.broker_key,), audit_store="memory", auth_issuer=ISSUER,
        auth_jwks_file=world.idp.jwks, auth_tenants=(TENANT, KEYLESS))
    return boot(settings, clock=clock, engine_factory=lambda p, s: spy)


@pytest.fixture
def good(world: World, clock: _Clock) -> Iterator[tuple[Booted, FakeEngine]]:
    spy = FakeEngine()
    booted = _boot(world, "good", MEASUREMENT, clock, spy)
    yield booted, spy
    booted.close()


def _ask(booted: Booted, token: str, *, measurement: str = MEASUREMENT
         ) -> tuple[int, dict[str, Any], object]:
    """Through HTTP on 127.0.0.1 with the client SDK, as a hospital app would; the receipt is
    the one the SDK verified against the attested audit key."""
    root = booted.platform.sim_root
    assert root is not None
    with BackgroundServer(create_enclave_app(booted.service)) as server, \
            EnclaveSession(server.url, sim_policy(measurement=measurement),
                           sim_roots=frozenset({root})) as session:
        response = session.request("POST", proto.CHAT_PATH, body=json.dumps({
            "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "seed": 5,
            "max_tokens": 8}).encode(), authorization=f"Bearer {token}")
    assert (response.receipt is None) == (response.header(proto.RECEIPT_HEADER) is None)
    return response.status, json.loads(response.body), response.receipt


def test_the_approved_enclave_gets_the_key_and_the_hospital_opens_its_entry(
        world: World, good: tuple[Booted, FakeEngine]) -> None:
    booted, spy = good
    before = len(world.releases(TENANT))
    for _ in range(2):
        status, body, receipt = _ask(booted, world.idp.token())
        assert status == 200 and receipt and body["choices"][0]["message"]["content"]
    # Fetched once, on first use, then kept in memory.
    fetched = world.releases(TENANT)[before:]
    assert [d.outcome for d in fetched] == ["allowed"]
    sink = booted.service.audit
    assert isinstance(sink, AuditLogSink)
    entry = parse_entry(sink.audit_log.entry(1))
    assert entry.prompt is not None and entry.answer is not None
    key = world.tenant_key.strip()
    open_commitment(key, "prompt", entry.salt,
                    commitment_input([{"role": "user", "content": QUESTION}]), entry.prompt)
    open_commitment(key, "answer", entry.salt, FAKE_ANSWER.encode(), entry.answer)
    # The entry names the version of the tenant's key (the first one, registered at setup),
    # so after a rotation the hospital still knows which key opens it.
    assert entry.key_version == 1
    assert spy.calls == ["chat", "chat"]


def test_a_tenant_without_a_key_is_refused_before_the_engine(
        world: World, good: tuple[Booted, FakeEngine], clock: _Clock) -> None:
    booted, spy = good
    for _ in range(3):
        status, body, receipt = _ask(booted, world.idp.token(tenant=KEYLESS))
        assert (status, body["error"]["code"], receipt) == (
            503, "audit.commitment_key_unavailable", None)
    assert spy.calls == []
    # One attested fetch per retry interval, not one per request.
    assert [d.code for d in world.releases(KEYLESS)] == ["kbs.not_found"]
    clock.at += timedelta(seconds=31)
    assert _ask(booted, world.idp.token(tenant=KEYLESS))[0] == 503
    assert len(world.releases(KEYLESS)) == 2


def test_an_enclave_the_hospital_did_not_approve_gets_no_key(
        world: World, clock: _Clock) -> None:
    spy = FakeEngine()
    rogue = _boot(world, "rogue", OTHER_MEASUREMENT, clock, spy)
    try:
        before = len(world.releases(TENANT))
        # Even a client that would talk to it (its own policy too loose) gets no answer.
        status, body, receipt = _ask(rogue, world.idp.token(), measurement=OTHER_MEASUREMENT)
        assert (status, body["error"]["code"], receipt) == (
            503, "audit.commitment_key_unavailable", None)
        assert spy.calls == []
        refused = world.releases(TENANT)[before:]
        assert [(d.outcome, d.code) for d in refused] == [
            ("refused", "attestation.measurement_mismatch")]
    finally:
        rogue.close()


def test_the_cache_fetches_once_per_tenant_and_never_keeps_a_bad_key() -> None:
    calls: list[str] = []
    answers: dict[str, bytes | MedclaveError] = {
        "a": b"k" * 40 + b"\n", "b": b"short", "c": KbsError("kbs.unavailable")}

    def fetch(tenant: str) -> CommitKey:
        calls.append(tenant)
        got = answers[tenant]
        if isinstance(got, MedclaveError):
            raise got
        return CommitKey(got, 3)

    moments = [now()]
    keys = BrokerCommitKeys(fetch, clock=lambda: moments[-1], retry_after=timedelta(seconds=5))
    assert keys.key_for("a") == keys.key_for("a") == CommitKey(b"k" * 40, 3)
    for tenant in ("b", "c", "b", "c"):
        with pytest.raises(MedclaveError) as err:
            keys.key_for(tenant)
        assert err.value.code == "audit.commitment_key_unavailable"
    assert calls == ["a", "b", "c"]
    moments.append(moments[0] + timedelta(seconds=6))
    answers["c"] = b"c" * 32
    assert keys.key_for("c").key == b"c" * 32
    with pytest.raises(InputError):
        commitment_resource("Not A Broker Owner")  # a tenant id that names no broker owner


def forging_relay(upstream: str) -> FastAPI:
    """The operator's relay between enclave and broker (issue 9.1): it forwards every call and
    replaces each release's ``sealed`` with its own key, sealed to the enclave's (public)
    ephemeral key under the (public) release AAD."""
    app = FastAPI()

    @app.post("/kbs/v1/{step}")
    async def forward(step: str, request: Request) -> Response:
        body = await request.body()
        async with httpx.AsyncClient(base_url=upstream) as http:
            real = await http.post(f"/kbs/v1/{step}", content=body,
                                   headers={"content-type": "application/json"})
        if step != "release":
            return Response(real.content, real.status_code, media_type="application/json")
        sent = json.loads(body)
        ephemeral = base64.b64decode(sent["evidence"]["runtime"]["ephemeral_key"])
        aad = release_aad(sent["resource"], 1, bytes.fromhex(sent["nonce"]))
        planted = hpke.seal(ephemeral, PLANTED_KEY, RELEASE_INFO, aad)
        forged = {**(real.json() if real.status_code == 200 else {}), "version": 1,
                  "sealed": base64.b64encode(planted).decode()}
        return Response(json.dumps(forged), 200, media_type="application/json")

    return app


PLANTED_KEY = b"the operator chose this key; 32+"


@pytest.mark.parametrize("enclave", ["good", "rogue"])
def test_a_relay_planting_its_own_commitment_key_gets_the_tenant_refused(
        world: World, clock: _Clock, caplog: pytest.LogCaptureFixture, enclave: str) -> None:
    """Issue 9.1 on the whole path: before, the enclave committed the tenant's entries under
    the operator's planted key (which then named the clinician and confirmed a guessed prompt)
    while receipts still checked out, even when the real broker refused the release (the rogue
    build). Now the forged answer fails the broker's signature, the tenant is refused before
    the engine runs, and the operator's log says why."""
    spy = FakeEngine()
    caplog.set_level(logging.WARNING)
    with BackgroundServer(forging_relay(world.kbs)) as relay:
        measurement = MEASUREMENT if enclave == "good" else OTHER_MEASUREMENT
        booted = _boot(world, enclave, measurement, clock, spy, kbs=relay.url)
        try:
            before = len(world.releases(TENANT))
            status, body, receipt = _ask(booted, world.idp.token(), measurement=measurement)
            assert (status, body["error"]["code"], receipt) == (
                503, "audit.commitment_key_unavailable", None)
            assert spy.calls == []
            sink = booted.service.audit
            assert isinstance(sink, AuditLogSink)
            assert sink.audit_log.size == 0  # nothing committed under the planted key
            # The real broker released to the approved build and refused the rogue one; either
            # way the relay's swapped answer is what the enclave refused.
            assert [d.outcome for d in world.releases(TENANT)[before:]] == [
                "allowed" if enclave == "good" else "refused"]
        finally:
            booted.close()
    assert any("kbs.answer_unauthenticated" in r.getMessage() for r in caplog.records)
