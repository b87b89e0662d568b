"""The broker's revocation list: owners manage it; a revoked enclave gets no further keys; the
standing check answers it, signed; identities come only from verified evidence."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from medclave.attestation import sim
from medclave.attestation.verifier import verify_bundle
from medclave.cli import kbs as kbs_cli
from medclave.errors import AttestationError, KbsError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.revocation import identities
from medclave.kbs.signing import BrokerSigner, TrustedBrokers
from medclave.protocol.evidence import EvidenceBundle
from tests.conftest import flip
from tests.kbs.conftest import BACKENDS, Live, open_backend
from tests.kbs.helpers import (
    MEASUREMENT,
    OTHER_MEASUREMENT,
    RESOURCE,
    provision,
    sim_attester,
    sim_policy,
    trusting,
)

LiveFactory = Callable[..., Live]
OTHER_RESOURCE = "kbs:///hospital/commitment-key/audit"


@pytest.fixture(params=BACKENDS)
def live(request: pytest.FixtureRequest, live_factory: LiveFactory, authority: sim.SimAuthority,
         tmp_path: Path) -> Iterator[Live]:
    store = open_backend(request.param, request, tmp_path)
    live = live_factory(sim_roots=(authority.root_fingerprint,), store=store)
    provision(live.url, live.token("vendor"), policy=sim_policy())
    provision(live.url, live.token("hospital"), resource=OTHER_RESOURCE, policy=sim_policy())
    yield live
    store.close()


def _client(live: Live, authority: sim.SimAuthority, **kw: object) -> KbsClient:
    return KbsClient(live.url, sim_attester(authority, **kw),  # type: ignore[arg-type]
                     trusted=trusting(live.broker))


def _claims(authority: sim.SimAuthority) -> dict[str, object]:
    nonce = os.urandom(32)
    bundle = sim.make_bundle(authority, nonce=nonce, runtime={}, measurement=MEASUREMENT)
    from datetime import UTC, datetime
    v = verify_bundle(bundle, now=datetime.now(UTC), expected_nonce=nonce,
                      sim_roots=frozenset({authority.root_fingerprint}))
    return dict(v.claims)


@pytest.mark.parametrize("kind", ["measurement", "chip_id", "tcb"])
def test_a_revoked_enclave_gets_no_further_keys(live: Live, authority: sim.SimAuthority,
                                                kind: str) -> None:
    with _client(live, authority) as client:
        assert client.fetch(RESOURCE) == b"k" * 32
        assert client.standing(RESOURCE) == "good"
    claims = _claims(authority)
    value = {"measurement": MEASUREMENT.hex(), "chip_id": claims["chip_id"],
             "tcb": claims["reported_tcb"]}[kind]
    assert isinstance(value, str)
    with OwnerClient(live.url, live.token("vendor")) as owner:
        entry = owner.revoke(kind, value.upper(), "CVE-2026-0001")
        assert entry["value"] == value.lower() and entry["reason"] == "CVE-2026-0001"
        assert [r["kind"] for r in owner.revocations()] == [kind]
    with _client(live, authority) as client:
        with pytest.raises(KbsError) as err:
            client.fetch(RESOURCE)
        assert err.value.code == "kbs.revoked"
        assert client.standing(RESOURCE) == "revoked"
        # Another owner's list is its own: the hospital still releases to this enclave.
        assert client.fetch(OTHER_RESOURCE) == b"k" * 32
        assert client.standing(OTHER_RESOURCE) == "good"
    codes = [(d.action, d.code) for d in live.decisions]
    assert ("release", "kbs.revoked") in codes and ("standing", "kbs.revoked") in codes
    assert ("revoke", None) in codes
    # Taken off the list, the enclave is served again.
    with OwnerClient(live.url, live.token("vendor")) as owner:
        owner.unrevoke(kind, value)
        assert owner.revocations() == []
    with _client(live, authority) as client:
        assert client.fetch(RESOURCE) == b"k" * 32


def test_another_build_is_not_caught_by_a_revocation(live: Live,
                                                     authority: sim.SimAuthority) -> None:
    with OwnerClient(live.url, live.token("vendor")) as owner:
        owner.revoke("measurement", OTHER_MEASUREMENT.hex())
    with _client(live, authority) as client:
        assert client.fetch(RESOURCE) == b"k" * 32
        assert client.standing(RESOURCE) == "good"


def test_owner_api_refusals(live: Live) -> None:
    headers = {"Authorization": f"Bearer {live.token('vendor')}"}
    bad = [{"kind": "colour", "value": "00"}, {"kind": "measurement", "value": "xyz"},
           {"kind": "measurement", "value": "00", "extra": 1}, {"kind": "tcb"}]
    for body in bad:
        r = httpx.post(live.url + "/kbs/v1/owner/revocations", json=body, headers=headers)
        assert r.status_code == 400, body
    r = httpx.delete(live.url + "/kbs/v1/owner/revocations/measurement/00", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "kbs.not_found"
    r = httpx.delete(live.url + "/kbs/v1/owner/revocations/colour/00", headers=headers)
    assert r.status_code == 400
    r = httpx.get(live.url + "/kbs/v1/owner/revocations")
    assert r.status_code == 401


def test_standing_answers_are_signed_and_checked(live: Live, authority: sim.SimAuthority
                                                 ) -> None:
    """An answer "good" forged by whoever sits between enclave and broker is refused."""
    forger = BrokerSigner.generate()
    mounted = httpx.Client(base_url=live.url, transport=_Rewrite(forger))
    with KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker),
                   http=mounted) as client, pytest.raises(KbsError) as err:
        client.standing(RESOURCE)
    assert err.value.code == "kbs.answer_unauthenticated"
    # And an enclave that does not pin this broker refuses even its genuine answer.
    with KbsClient(live.url, sim_attester(authority),
                   trusted=TrustedBrokers.of([forger.public_key])) as client:
        with pytest.raises(KbsError) as err:
            client.standing(RESOURCE)
        assert err.value.code == "kbs.answer_unauthenticated"


class _Rewrite(httpx.BaseTransport):
    """Passes requests to the broker but signs every standing answer "good" with its own key."""

    def __init__(self, signer: BrokerSigner) -> None:
        self._inner = httpx.HTTPTransport()
        self._signer = signer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if not request.url.path.endswith("/standing"):
            return response
        response.read()
        body = response.json()
        body["standing"] = "good"
        body["signature"] = base64.b64encode(self._signer.sign(b"anything")).decode()
        return httpx.Response(200, json=body)


def test_standing_needs_fresh_verified_evidence(live: Live, authority: sim.SimAuthority) -> None:
    nonce = httpx.post(live.url + "/kbs/v1/challenge").json()["nonce"]
    bundle = sim.make_bundle(authority, nonce=os.urandom(32), runtime={}, measurement=MEASUREMENT)
    r = httpx.post(live.url + "/kbs/v1/standing", json={
        "resource": RESOURCE, "nonce": nonce, "evidence": bundle.model_dump(mode="json")})
    assert r.status_code >= 400 and r.json()["error"]["code"].startswith("attestation.")
    r = httpx.post(live.url + "/kbs/v1/standing", json={"resource": RESOURCE, "nonce": nonce})
    assert r.status_code == 400


def test_identities_come_from_verified_claims(authority: sim.SimAuthority) -> None:
    claims = _claims(authority)
    nonce = os.urandom(32)
    bundle = sim.make_bundle(authority, nonce=nonce, runtime={"measurement": "00" * 48},
                             measurement=MEASUREMENT)
    from datetime import UTC, datetime
    v = verify_bundle(bundle, now=datetime.now(UTC), expected_nonce=nonce,
                      sim_roots=frozenset({authority.root_fingerprint}))
    found = identities(v, bundle)
    assert found["measurement"] == {MEASUREMENT.hex()}  # not what the runtime claims
    assert found["chip_id"] == {claims["chip_id"]} and found["gpu_serial"] == set()


@pytest.mark.vectors
def test_gpu_serial_is_the_device_certificate_serial(vectors: Path) -> None:
    """The real H100 (vector N1): its device leaf's serial, as `openssl x509 -serial` reads it."""
    from medclave.attestation.verifier import verify_raw
    from tests.attestation._nvidia_helpers import N1_NONCE, RIM_VALID_AT, load

    n1 = load(vectors)
    pems = [c.public_bytes(Encoding.PEM).decode() for c in n1.chain]
    bundle = EvidenceBundle.model_validate({
        "version": 1, "platform": "nvidia", "evidence": base64.b64encode(n1.report).decode(),
        "endorsements": {"certificates": pems}, "nonce": N1_NONCE.hex(), "runtime": {}})
    v = verify_raw(n1.report, now=RIM_VALID_AT, platform="nvidia",
                   certificates=tuple(p.encode() for p in pems), nonce=N1_NONCE)
    assert identities(v, bundle)["gpu_serial"] == {"53c22ba15e5d68088282da074ed9fb37aa585771"}
    # Its twin with one signed byte flipped never verifies, so never yields an identity.
    with pytest.raises(AttestationError):
        verify_raw(flip(n1.report, 40), now=RIM_VALID_AT, platform="nvidia",
                   certificates=tuple(p.encode() for p in pems), nonce=N1_NONCE)


def test_cli_add_list_remove(live: Live) -> None:
    env = {"MEDCLAVE_KBS_URL": live.url, "MEDCLAVE_KBS_TOKEN": live.token("vendor")}
    run = CliRunner().invoke
    added = run(kbs_cli.app, ["revocation", "add", "measurement", MEASUREMENT.hex(),
                              "--reason", "withdrawn build"], env=env)
    assert added.exit_code == 0, added.output
    listed = run(kbs_cli.app, ["revocation", "list"], env=env)
    assert MEASUREMENT.hex() in listed.output
    bad = run(kbs_cli.app, ["revocation", "add", "colour", "00"], env=env)
    assert bad.exit_code == 2
    removed = run(kbs_cli.app, ["revocation", "remove", "measurement", MEASUREMENT.hex()], env=env)
    assert removed.exit_code == 0, removed.output
    with OwnerClient(live.url, live.token("vendor")) as owner:
        assert owner.revocations() == []
