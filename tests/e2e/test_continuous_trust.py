"""Continuous trust end to end, on real servers on 127.0.0.1: the official openai client ->
proxy -> sim enclave, with a key broker.

* The vendor revokes the enclave's measurement mid-run: the enclave's own standing check learns
  it, drops its keys and stops serving; the next request is refused, and the proxy's scheduled
  re-attestation then reports why in /medclave/status.
* The hospital's collateral changes while the proxy runs (a newer TCB baseline makes the
  enclave's TCB OutOfDate; a revoked measurement): the proxy re-attests at once and refuses the
  next request, without a restart; undone, requests flow again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from medclave.attestation.policy import AppraisalPolicy
from medclave.attestation.sim import SimAuthority
from medclave.background import BackgroundServer
from medclave.client.continuous import TrustWatch
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.errors import KbsError
from medclave.kbs.app import create_app
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import TrustedBrokers
from medclave.kbs.store import MemoryKbsStore
from tests.e2e.helpers import FAKE_ANSWER, MEASUREMENT, Enclave, FakeEngine, sim_policy, start_enclave

AUDIT_KEY = "kbs:///ops/audit-key/enclave-log"
# What the sim platform reports (attestation/sim): a Milan at bl 3, tee 0, snp 8, ucode 115.
SIM_TCB = {"bl": 3, "tee": 0, "snp": 8, "ucode": 115}


@dataclass
class World:
    broker: KeyBroker
    kbs_url: str
    enclave: Enclave


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A broker keeping the enclave's audit key (released to MEASUREMENT), and the enclave,
    which checks its standing every second."""
    root = SimAuthority.load_or_create(tmp_path / "enclave").root_fingerprint
    settings = KbsSettings(data_dir=tmp_path / "kbs", store="memory", sim_roots=(root,),
                           rate_per_second=1000.0, rate_burst=1000)
    broker = build_broker(settings, store=MemoryKbsStore(), wrapper=AesGcmKek(os.urandom(32)))
    with BackgroundServer(create_app(settings, broker=broker)) as server:
        with OwnerClient(server.url, broker.issue_owner_token("ops")) as owner:
            owner.put(AUDIT_KEY, os.urandom(32))
            owner.set_policy(AUDIT_KEY, ReleasePolicy(appraisal=AppraisalPolicy.model_validate({
                "platforms": ["sim"],
                "platform": {"sim": {"reference_values": {"measurement": [MEASUREMENT]}}}})))
        enclave = start_enclave(tmp_path / "enclave", None, engine=FakeEngine(),
                                kbs_url=server.url, kbs_keys=(broker.signer.public_key.hex(),),
                                audit_key_resource=AUDIT_KEY, audit_origin="test.example/log",
                                standing_check_seconds=1, standing_max_age_seconds=60)
        try:
            yield World(broker, server.url, enclave)
        finally:
            enclave.stop()


@dataclass
class Proxy:
    url: str
    session: EnclaveSession
    watch: TrustWatch

    def app(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def ask(self) -> str | None:
        answer = self.app().chat.completions.create(
            model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": "status?"}])
        return answer.choices[0].message.content

    def status(self) -> dict[str, object]:
        body = httpx.get(f"{self.url}/medclave/status").json()
        assert isinstance(body, dict)
        return body


@contextlib.contextmanager
def _proxy(enclave: Enclave, folder: Path, collateral: dict[str, object] | None = None,
           **session: object) -> Iterator[Proxy]:
    policy_file = folder / "policy.json"
    policy_file.write_text(sim_policy().model_dump_json())
    collateral_file = folder / "collateral.json"
    collateral_file.write_text(json.dumps(collateral or {}))
    from medclave.attestation.collateral import load_collateral

    s = EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}),
                       collateral=load_collateral(collateral_file), **session)  # type: ignore[arg-type]
    watch = TrustWatch(s, policy_file=policy_file, collateral_file=collateral_file, poll=3600)
    server = BackgroundServer(create_proxy_app(s), name="test-proxy").start()
    try:
        yield Proxy(server.url, s, watch)
    finally:
        server.stop()
        s.close()


class _Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def _wait(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_measurement_revoked_mid_run_refuses_the_next_request(world: World,
                                                              tmp_path: Path) -> None:
    clock = _Clock()
    with _proxy(world.enclave, tmp_path, clock=clock) as proxy:
        assert proxy.ask() == FAKE_ANSWER
        assert proxy.status()["trust"] == {"state": "verified",
                                           "verified_at": proxy.status()["trust"]["verified_at"]}
        with OwnerClient(world.kbs_url, world.broker.issue_owner_token("ops")) as owner:
            owner.revoke("measurement", MEASUREMENT, "build withdrawn")
        service = world.enclave.booted.service
        _wait(lambda: service.revoked is not None)  # the enclave's own standing check
        assert service.keys.usable() == []  # OHTTP keys dropped
        with pytest.raises(openai.APIStatusError) as refused:
            proxy.ask()
        assert refused.value.status_code == 502  # the proxy: upstream unusable
        assert refused.value.code == "enclave.revoked"
        # The proxy's scheduled re-attestation (five minutes by default) notices without any
        # request, and says why.
        assert proxy.watch.tick() == "idle"
        clock.advance(301)
        assert proxy.watch.tick() == "failed"
        trust = proxy.status()["trust"]
        assert isinstance(trust, dict)
        assert trust["state"] == "failed" and trust["code"] == "enclave.revoked"
        with pytest.raises(openai.APIStatusError) as refused:
            proxy.ask()
        assert refused.value.code == "client.reattestation_failed"
        # The broker, too, releases nothing more to this build.
        with KbsClient(world.kbs_url, world.enclave.booted.platform.attester,
                       trusted=TrustedBrokers.of([world.broker.signer.public_key])) as kbs:
            with pytest.raises(KbsError) as err:
                kbs.fetch(AUDIT_KEY)
            assert err.value.code == "kbs.revoked"


def test_collateral_update_takes_effect_without_restarting_the_proxy(world: World,
                                                                     tmp_path: Path) -> None:
    current = {"snp_tcb_baseline": {"Milan": SIM_TCB}}
    with _proxy(world.enclave, tmp_path, current) as proxy:
        assert proxy.ask() == FAKE_ANSWER
        enclave = proxy.status()["enclave"]
        assert isinstance(enclave, dict) and enclave["tcb_status"] == "UpToDate"
        assert proxy.watch.tick() == "idle"
        # AMD publishes new microcode: the enclave's TCB is now behind.
        newer = {"snp_tcb_baseline": {"Milan": {**SIM_TCB, "ucode": SIM_TCB["ucode"] + 1}}}
        (tmp_path / "collateral.json").write_text(json.dumps(newer))
        assert proxy.watch.tick() == "failed"
        trust = proxy.status()["trust"]
        assert isinstance(trust, dict)
        assert trust["state"] == "failed" and trust["code"] == "policy.tcb_too_low"
        with pytest.raises(openai.APIStatusError) as refused:
            proxy.ask()
        assert refused.value.status_code == 502  # the proxy: upstream unusable
        assert refused.value.code == "client.reattestation_failed"
        # The hospital revokes the measurement instead: refused for that reason.
        (tmp_path / "collateral.json").write_text(json.dumps(
            {**current, "revoked_measurements": [MEASUREMENT]}))
        assert proxy.watch.tick() == "failed"
        assert proxy.status()["trust"]["code"] == "policy.measurement_revoked"  # type: ignore[index]
        # Undone: the next round re-attests and requests flow again, same proxy.
        (tmp_path / "collateral.json").write_text(json.dumps(current))
        assert proxy.watch.tick() == "reloaded"
        assert proxy.ask() == FAKE_ANSWER
        assert proxy.status()["trust"]["state"] == "verified"  # type: ignore[index]


def test_a_collateral_file_that_no_longer_loads_stops_requests(world: World,
                                                              tmp_path: Path) -> None:
    with _proxy(world.enclave, tmp_path) as proxy:
        assert proxy.ask() == FAKE_ANSWER
        (tmp_path / "collateral.json").write_text("{not json")
        assert proxy.watch.tick() == "failed"
        with pytest.raises(openai.APIStatusError) as refused:
            proxy.ask()
        assert refused.value.code == "client.reattestation_failed"
