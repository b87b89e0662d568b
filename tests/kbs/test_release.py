"""The release protocol over real HTTP on 127.0.0.1, with sim evidence.

Every refusal has its own code, both in the answer and in the broker's decision log, and every
attempt spends its nonce.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from medclave.attestation import sim
from medclave.crypto import hpke
from medclave.errors import AttestationError, KbsError, MedclaveError, PolicyError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.models import RELEASE_INFO, release_aad
from medclave.kbs.sealed_models import load_sealed_model, seal_model
from medclave.kbs.signing import BrokerSigner, TrustedBrokers
from medclave.kbs.store import MemoryKbsStore
from tests.attestation._ecdsa import snp_high_s
from tests.kbs.conftest import Clock, Live
from tests.kbs.helpers import (
    MEASUREMENT,
    OTHER_MEASUREMENT,
    RESOURCE,
    challenge,
    ephemeral_runtime,
    error_code,
    post_release,
    provision,
    sim_attester,
    sim_policy,
    trusting,
)

LiveFactory = Callable[..., Live]


@pytest.fixture
def live(live_factory: LiveFactory, authority: sim.SimAuthority) -> Live:
    return live_factory(sim_roots=(authority.root_fingerprint,))


def last_decision(live: Live) -> tuple[str, str | None]:
    d = live.decisions[-1]
    assert live.broker.store.decisions(limit=1)[0] == d  # recorded in the store too
    return d.outcome, d.code


# --- the full path ---------------------------------------------------------------------------


def test_release_then_model_unsealed_into_memory(live: Live, authority: sim.SimAuthority,
                                                  tmp_path: Path) -> None:
    weights = os.urandom(300_000)
    (tmp_path / "llama.gguf").write_bytes(weights)
    with OwnerClient(live.url, live.token("vendor")) as owner:
        result = seal_model(tmp_path / "llama.gguf", tmp_path / "sealed", owner="vendor",
                            broker=owner, kbs_url=live.url, chunk_size=64 * 1024)
        assert result.key_ref is not None and result.key_ref.resource == RESOURCE
        owner.set_policy(RESOURCE, sim_policy(model_digests=(result.manifest.plaintext_sha256,)))
    runtime = {"model_digest": result.manifest.plaintext_sha256}
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker),
                   runtime=runtime) as client:
        fd, path, manifest = load_sealed_model(client, tmp_path / "sealed")
    try:
        assert path == f"/proc/self/fd/{fd}"
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    finally:
        os.close(fd)
    assert hashlib.sha256(data).hexdigest() == manifest.plaintext_sha256
    assert data == weights
    outcome, code = last_decision(live)
    assert (outcome, code) == ("allowed", None)
    d = live.decisions[-1]
    assert d.version == 1 and d.policy_digest and "binding:ok" in d.checks
    assert "report signature:ok" in d.checks


def test_fetch_returns_the_secret_and_each_version(live: Live, authority: sim.SimAuthority) -> None:
    token = live.token("vendor")
    provision(live.url, token, secret=b"v1" * 16, policy=sim_policy())
    with OwnerClient(live.url, token) as owner:
        assert owner.rotate(RESOURCE, b"v2" * 16) == 2
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker)) as client:
        assert client.fetch(RESOURCE) == b"v2" * 16
        assert client.fetch(RESOURCE, version=1) == b"v1" * 16


def test_sealed_answer_opens_only_for_its_request(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    private, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    r = post_release(live.url, RESOURCE, nonce, bundle)
    assert r.status_code == 200, r.text
    sealed = base64.b64decode(r.json()["sealed"])
    assert hpke.open(private, sealed, RELEASE_INFO, release_aad(RESOURCE, 1, nonce)) == b"k" * 32
    for aad in (release_aad(RESOURCE, 2, nonce), release_aad("kbs:///vendor/model-key/x", 1, nonce),
                release_aad(RESOURCE, 1, os.urandom(32))):
        with pytest.raises(MedclaveError):
            hpke.open(private, sealed, RELEASE_INFO, aad)
    with pytest.raises(MedclaveError):
        hpke.open(hpke.generate_keypair()[0], sealed, RELEASE_INFO, release_aad(RESOURCE, 1, nonce))


def test_decision_log_names_evidence_by_its_signed_bytes(live: Live,
                                                         authority: sim.SimAuthority) -> None:
    """ECDSA lets anyone re-encode a report as (r, n - s) without a key; the broker releases to it (the same
    attested enclave) and logs it as the same evidence: SHA-256 of report bytes [0, 0x2A0)."""
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    raw = bundle.evidence_bytes()
    twin = bundle.model_copy(update={"evidence": base64.b64encode(snp_high_s(raw)).decode()})
    r = post_release(live.url, RESOURCE, nonce, twin)
    assert r.status_code == 200, r.text
    assert last_decision(live) == ("allowed", None)
    logged = live.decisions[-1].evidence_sha256
    assert logged == hashlib.sha256(raw[:0x2A0]).hexdigest()
    assert logged != hashlib.sha256(snp_high_s(raw)).hexdigest()


# --- refusals, each with its own code --------------------------------------------------------


def refused(live: Live, response: httpx.Response, code: str, status: int) -> None:
    assert response.status_code == status, response.text
    assert error_code(response) == code
    assert "sealed" not in response.json()
    assert last_decision(live) == ("refused", code)


def release_with(live: Live, authority: sim.SimAuthority, *, resource: str = RESOURCE,
                 measurement: bytes = MEASUREMENT, debug: bool = False,
                 **runtime_extra: object) -> httpx.Response:
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime(**runtime_extra)
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=measurement,
                             debug=debug)
    return post_release(live.url, resource, nonce, bundle)


def test_wrong_measurement(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    r = release_with(live, authority, measurement=OTHER_MEASUREMENT)
    refused(live, r, "attestation.measurement_mismatch", 403)


def test_debug_guest(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    refused(live, release_with(live, authority, debug=True), "policy.debug_forbidden", 403)


def test_unknown_platform(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    body = {**bundle.model_dump(mode="json"), "platform": "pdp11"}
    refused(live, post_release(live.url, RESOURCE, nonce, body), "attestation.unknown_platform", 400)


def test_platform_the_policy_does_not_name(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy(platforms=("sev-snp",)))
    refused(live, release_with(live, authority), "policy.platform_not_allowed", 403)


def test_sim_root_not_configured(live_factory: LiveFactory, authority: sim.SimAuthority) -> None:
    live = live_factory(sim_roots=())
    provision(live.url, live.token("vendor"), policy=sim_policy())
    refused(live, release_with(live, authority), "attestation.root_untrusted", 403)


def test_sim_from_another_root(live_factory: LiveFactory, authority: sim.SimAuthority) -> None:
    live = live_factory(sim_roots=(sim.SimAuthority.create().root_fingerprint,))
    provision(live.url, live.token("vendor"), policy=sim_policy())
    r = release_with(live, authority)
    assert r.status_code == 403 and error_code(r).startswith("attestation.")
    assert last_decision(live) == ("refused", error_code(r))


def test_replayed_nonce(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    assert post_release(live.url, RESOURCE, nonce, bundle).status_code == 200
    refused(live, post_release(live.url, RESOURCE, nonce, bundle), "kbs.nonce_replayed", 400)


def test_a_refused_attempt_spends_the_nonce(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bad = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=OTHER_MEASUREMENT)
    good = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    assert post_release(live.url, RESOURCE, nonce, bad).status_code == 403
    refused(live, post_release(live.url, RESOURCE, nonce, good), "kbs.nonce_replayed", 400)


def test_expired_nonce(live: Live, authority: sim.SimAuthority, clock: Clock) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    clock.advance(live.settings.nonce_ttl_seconds + 1)
    refused(live, post_release(live.url, RESOURCE, nonce, bundle), "kbs.nonce_expired", 400)


def test_nonce_never_issued(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = os.urandom(32)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    refused(live, post_release(live.url, RESOURCE, nonce, bundle), "kbs.nonce_unknown", 400)


def test_bundle_for_another_nonce(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce, other = challenge(live.url), challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=other, runtime=runtime, measurement=MEASUREMENT)
    refused(live, post_release(live.url, RESOURCE, nonce, bundle), "attestation.nonce_mismatch", 403)


def test_report_data_not_binding_the_ephemeral_key(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    _, swapped = ephemeral_runtime()  # a man in the middle's key
    body = {**bundle.model_dump(mode="json"), "runtime": swapped}
    refused(live, post_release(live.url, RESOURCE, nonce, body), "attestation.binding_mismatch", 403)


@pytest.mark.parametrize("offset", [0x00, 0x50, 0x90, 0x1A0, 0x1E0])
def test_tampered_evidence(live: Live, authority: sim.SimAuthority, offset: int) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    report = bytearray(bundle.evidence_bytes())
    report[offset] ^= 0x01
    body = {**bundle.model_dump(mode="json"), "evidence": base64.b64encode(report).decode()}
    refused(live, post_release(live.url, RESOURCE, nonce, body), "attestation.signature_invalid",
            403)


def test_unknown_resource(live: Live, authority: sim.SimAuthority) -> None:
    r = release_with(live, authority, resource="kbs:///vendor/model-key/nothing")
    refused(live, r, "kbs.not_found", 404)


def test_policy_that_names_another_model(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy(model_digests=("ab" * 32,)))
    r = release_with(live, authority, model_digest="cd" * 32)
    refused(live, r, "policy.model_not_allowed", 403)
    r = release_with(live, authority)  # no model digest at all
    refused(live, r, "policy.model_not_allowed", 403)


def test_several_violations_are_reported_together(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy(model_digests=("ab" * 32,)))
    r = release_with(live, authority, measurement=OTHER_MEASUREMENT, debug=True)
    refused(live, r, "policy.refused", 403)
    detail = live.decisions[-1].detail
    assert "measurement" in detail and "debug" in detail and "model_digest" in detail


def test_evidence_age_is_bounded_by_the_nonce_lifetime(live: Live, authority: sim.SimAuthority) -> None:
    # Evidence answers a nonce issued at most one TTL (60 s) ago: a policy allowing less refuses.
    provision(live.url, live.token("vendor"), policy=sim_policy(max_age=30))
    refused(live, release_with(live, authority), "policy.evidence_stale", 403)
    with OwnerClient(live.url, live.token("vendor")) as owner:
        owner.set_policy(RESOURCE, sim_policy(max_age=300))
    assert release_with(live, authority).status_code == 200


def test_requester_not_in_the_policy(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy(requesters=("st-marys/inference",)))
    refused(live, release_with(live, authority, requester="elsewhere"),
            "kbs.requester_not_allowed", 403)
    assert release_with(live, authority, requester="st-marys/inference").status_code == 200


def test_resource_without_a_policy(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=None)
    refused(live, release_with(live, authority), "kbs.policy_missing", 403)


def test_runtime_without_an_ephemeral_key(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    bundle = sim.make_bundle(authority, nonce=nonce, runtime={"engine": "llama.cpp"},
                             measurement=MEASUREMENT)
    refused(live, post_release(live.url, RESOURCE, nonce, bundle), "kbs.ephemeral_key_missing", 400)


def test_ephemeral_key_that_is_not_x25519(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    nonce = challenge(live.url)
    runtime = {"ephemeral_key": base64.b64encode(b"\x01" * 16).decode()}
    bundle = sim.make_bundle(authority, nonce=nonce, runtime=runtime, measurement=MEASUREMENT)
    refused(live, post_release(live.url, RESOURCE, nonce, bundle), "crypto.bad_key", 400)


def test_retired_version_is_gone(live: Live, authority: sim.SimAuthority) -> None:
    token = live.token("vendor")
    provision(live.url, token, policy=sim_policy())
    with OwnerClient(live.url, token) as owner:
        owner.rotate(RESOURCE)
        owner.retire(RESOURCE, 1)
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker)) as client:
        with pytest.raises(KbsError) as e:
            client.fetch(RESOURCE, version=1)
        assert e.value.code == "kbs.not_found"
        assert len(client.fetch(RESOURCE)) == 32  # the broker drew a fresh 256-bit key


def test_client_raises_the_brokers_code(live: Live, authority: sim.SimAuthority) -> None:
    provision(live.url, live.token("vendor"), policy=sim_policy())
    attester = sim_attester(authority, measurement=OTHER_MEASUREMENT)
    with KbsClient(live.url, attester, trusted=trusting(live.broker)) as client, \
            pytest.raises(MedclaveError) as e:
        client.fetch(RESOURCE)
    assert e.value.code == "attestation.measurement_mismatch"
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker)) as client, \
            pytest.raises(KbsError) as e2:
        client.fetch("kbs:///vendor/model-key/none")
    assert e2.value.code == "kbs.not_found"


def test_client_against_nothing_listening() -> None:
    never = sim_attester(sim.SimAuthority.create())
    with KbsClient("http://127.0.0.1:9", never, trusted=TrustedBrokers.of([bytes(32)]),
                   timeout=2.0) as client, \
            pytest.raises(KbsError) as e:
        client.fetch(RESOURCE)
    assert e.value.code == "kbs.unavailable"


# --- malformed requests and limits -----------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'{"resource": "kbs:///a/b/c"}',
    b'{"resource": "kbs:///a/b/c", "nonce": "zz", "evidence": {}}',
])
def test_malformed_release_bodies(live: Live, body: bytes) -> None:
    r = httpx.post(live.url + "/kbs/v1/release", content=body,
                   headers={"content-type": "application/json"})
    refused(live, r, "input.malformed", 400)


def test_oversized_body_is_refused_before_it_is_read(live_factory: LiveFactory) -> None:
    live = live_factory(max_request_bytes=4096)
    r = httpx.post(live.url + "/kbs/v1/release", content=b"{" + b" " * 10_000 + b"}")
    assert r.status_code == 413 and error_code(r) == "input.too_large"


def test_rate_limited(live_factory: LiveFactory) -> None:
    live = live_factory(rate_per_second=0.001, rate_burst=3)
    codes = [httpx.post(live.url + "/kbs/v1/challenge").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    r = httpx.post(live.url + "/kbs/v1/challenge")
    assert error_code(r) == "auth.rate_limited"


def test_unknown_route_looks_like_not_found(live: Live) -> None:
    r = httpx.get(live.url + "/kbs/v1/secrets")
    assert r.status_code == 404 and error_code(r) == "kbs.not_found"


def test_challenge_shape(live: Live, clock: Clock) -> None:
    r = httpx.post(live.url + "/kbs/v1/challenge")
    body = r.json()
    assert set(body) == {"nonce", "expires_at"} and len(bytes.fromhex(body["nonce"])) == 32
    from datetime import datetime

    expires = datetime.fromisoformat(body["expires_at"])
    assert (expires - clock.now).total_seconds() == live.settings.nonce_ttl_seconds


def test_broker_direct_refusal_types(authority: sim.SimAuthority, clock: Clock) -> None:
    """The service raises the catalogue errors themselves (the HTTP layer only maps them)."""
    from medclave.kbs.keywrap import AesGcmKek
    from medclave.kbs.service import KeyBroker

    broker = KeyBroker(MemoryKbsStore(), AesGcmKek(os.urandom(32)), signer=BrokerSigner.generate(),
                       sim_roots=frozenset({authority.root_fingerprint}), clock=clock)
    token = broker.issue_owner_token("vendor")
    owner = broker.authenticate(token)
    broker.create_resource(owner, RESOURCE, b"s" * 32, client_id="t")
    broker.set_policy(owner, RESOURCE, sim_policy(), client_id="t")
    issued = broker.challenge()
    _, runtime = ephemeral_runtime()
    bundle = sim.make_bundle(authority, nonce=issued.nonce, runtime=runtime,
                             measurement=OTHER_MEASUREMENT)
    with pytest.raises(PolicyError):
        broker.release(RESOURCE, issued.nonce, bundle, "t")
    issued = broker.challenge()
    swapped = bundle.model_copy(update={"nonce": issued.nonce.hex()})
    with pytest.raises(AttestationError):
        broker.release(RESOURCE, issued.nonce, swapped, "t")
