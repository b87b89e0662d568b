"""Mutated and random release requests: always a catalogue refusal, never a crash, never a key."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave import errors
from medclave.attestation import sim
from medclave.errors import MedclaveError
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.service import KeyBroker
from medclave.kbs.signing import BrokerSigner
from medclave.kbs.store import MemoryKbsStore
from medclave.protocol.evidence import EvidenceBundle
from tests.kbs.conftest import Clock, Live
from tests.kbs.helpers import MEASUREMENT, RESOURCE, ephemeral_runtime, provision, sim_policy

LiveFactory = Callable[..., Live]
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def broker(authority: sim.SimAuthority, clock: Clock) -> KeyBroker:
    b = KeyBroker(MemoryKbsStore(), AesGcmKek(os.urandom(32)), signer=BrokerSigner.generate(),
                  sim_roots=frozenset({authority.root_fingerprint}), clock=clock)
    owner = b.authenticate(b.issue_owner_token("vendor"))
    b.create_resource(owner, RESOURCE, b"s" * 32, client_id="t")
    b.set_policy(owner, RESOURCE, sim_policy(), client_id="t")
    return b


def fresh(broker: KeyBroker, authority: sim.SimAuthority) -> tuple[bytes, EvidenceBundle]:
    nonce = broker.challenge().nonce
    _, runtime = ephemeral_runtime()
    return nonce, sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)


def test_the_unmutated_bundle_is_released(broker: KeyBroker, authority: sim.SimAuthority) -> None:
    nonce, bundle = fresh(broker, authority)
    assert broker.release(RESOURCE, nonce, bundle, "t").version == 1


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1183), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_evidence_is_never_released(broker: KeyBroker, authority: sim.SimAuthority,
                                            flips: list[tuple[int, int]]) -> None:
    nonce, bundle = fresh(broker, authority)
    report = bytearray(bundle.evidence_bytes())
    for offset, mask in flips:
        report[offset] ^= mask
    if bytes(report) == bundle.evidence_bytes():
        return
    mutated = bundle.model_copy(update={"evidence": base64.b64encode(bytes(report)).decode()})
    with pytest.raises(MedclaveError) as e:
        broker.release(RESOURCE, nonce, mutated, "t")
    assert e.value.code in errors.CATALOGUE and e.value.code != "internal"
    assert broker.store.decisions(limit=1)[0].outcome == "refused"


@FUZZ
@given(st.dictionaries(st.text(max_size=12), st.one_of(st.text(max_size=40), st.integers(),
                                                       st.booleans(), st.none()), max_size=4))
def test_altered_runtime_is_never_released(broker: KeyBroker, authority: sim.SimAuthority,
                                           extra: dict[str, Any]) -> None:
    nonce, bundle = fresh(broker, authority)
    runtime = {**bundle.runtime, **extra}
    if runtime == bundle.runtime:
        return
    with pytest.raises(MedclaveError) as e:
        broker.release(RESOURCE, nonce, bundle.model_copy(update={"runtime": runtime}), "t")
    assert e.value.code in errors.CATALOGUE


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)


@pytest.fixture
def live(live_factory: LiveFactory, authority: sim.SimAuthority) -> Live:
    live = live_factory(sim_roots=(authority.root_fingerprint,))
    provision(live.url, live.token("vendor"), policy=sim_policy())
    return live


@FUZZ
@given(st.one_of(
    st.binary(max_size=200),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"resource": st.just(RESOURCE), "nonce": st.text(max_size=70),
                           "evidence": JSONISH}).map(lambda v: json.dumps(v).encode()),
))
def test_random_http_bodies_are_refused_with_a_code(live: Live, body: bytes) -> None:
    r = httpx.post(live.url + "/kbs/v1/release", content=body,
                   headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    code = r.json()["error"]["code"]
    assert code in errors.CATALOGUE
    assert set(r.json()) == {"error"}
