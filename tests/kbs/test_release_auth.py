"""Issue 9.1: the broker's answer is authenticated, and the enclave pins which broker it trusts.

The attack: a relay between the enclave and the broker replaced the ``sealed`` field of a
release with a key of its own choosing, HPKE-sealed to the enclave's ephemeral key (public, in
the evidence) under the AAD (resource, version, nonce: public too). The enclave took it. Each
test here plays that relay, or one of its variations, against the real broker on 127.0.0.1 and
shows the forged answer is refused with ``kbs.answer_unauthenticated``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from medclave.attestation import sim
from medclave.crypto import hpke
from medclave.errors import InputError, KbsError, PolicyError
from medclave.kbs.client import KbsClient, OwnerClient
from medclave.kbs.models import RELEASE_INFO, release_aad
from medclave.kbs.signing import BrokerSigner, TrustedBrokers, fingerprint, release_statement
from tests.kbs.conftest import Live
from tests.kbs.helpers import RESOURCE, provision, sim_attester, sim_policy, trusting

LiveFactory = Callable[..., Live]
SECRET = b"the vendor's real key, 32 bytes!"
PLANTED = b"the operator's planted key 32 B!"


@pytest.fixture
def live(live_factory: LiveFactory, authority: sim.SimAuthority) -> Live:
    served = live_factory(sim_roots=(authority.root_fingerprint,))
    provision(served.url, served.token("vendor"), secret=SECRET, policy=sim_policy())
    return served


Forge = Callable[[dict[str, Any], dict[str, Any], httpx.Response], httpx.Response]


def relay(live: Live, forge: Forge) -> httpx.Client:
    """An HTTP client whose every release answer passes through ``forge`` (the operator's
    relay): it sees the request the enclave sent and the broker's real answer."""
    upstream = httpx.Client(base_url=live.url)

    def handle(request: httpx.Request) -> httpx.Response:
        real = upstream.request(request.method, request.url.path, content=request.content,
                                headers={"content-type": "application/json"})
        if request.url.path != "/kbs/v1/release":
            return httpx.Response(real.status_code, content=real.content,
                                  headers={"content-type": "application/json"})
        return forge(json.loads(request.content), real.json(), real)

    return httpx.Client(base_url=live.url, transport=httpx.MockTransport(handle))


def plant(request: dict[str, Any], version: int) -> str:
    """What the attacker can compute from public data alone: PLANTED sealed to the enclave's
    ephemeral key under the release AAD."""
    ephemeral = base64.b64decode(request["evidence"]["runtime"]["ephemeral_key"])
    aad = release_aad(request["resource"], version, bytes.fromhex(request["nonce"]))
    return base64.b64encode(hpke.seal(ephemeral, PLANTED, RELEASE_INFO, aad)).decode()


def answer(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=body)


def fetch_through(live: Live, authority: sim.SimAuthority, forge: Forge) -> bytes:
    with relay(live, forge) as http:
        client = KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker),
                           http=http)
        return client.fetch(RESOURCE)


def test_the_relay_sees_the_real_key_pass_untouched(live: Live, authority: sim.SimAuthority
                                                    ) -> None:
    # The relay harness itself: forwarding unchanged, the real key arrives.
    assert fetch_through(live, authority, lambda req, body, real: answer(body)) == SECRET


def test_planted_sealed_key_is_refused(live: Live, authority: sim.SimAuthority,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """The reported attack: the signature of the real answer no longer matches."""
    def forge(req: dict[str, Any], body: dict[str, Any], real: httpx.Response) -> httpx.Response:
        return answer({**body, "sealed": plant(req, body["version"])})

    caplog.set_level(logging.ERROR, logger="medclave.kbs.client")
    with pytest.raises(KbsError) as err:
        fetch_through(live, authority, forge)
    assert err.value.code == "kbs.answer_unauthenticated"
    # The operator's log says why nothing was served.
    assert any("kbs.answer_unauthenticated" in r.getMessage() for r in caplog.records)


def test_planted_key_signed_by_the_attackers_own_key_is_refused(
        live: Live, authority: sim.SimAuthority) -> None:
    rogue = BrokerSigner.generate()

    def forge(req: dict[str, Any], body: dict[str, Any], real: httpx.Response) -> httpx.Response:
        sealed = plant(req, body["version"])
        statement = release_statement(
            resource=req["resource"], version=body["version"],
            nonce=bytes.fromhex(req["nonce"]),
            ephemeral_key=base64.b64decode(req["evidence"]["runtime"]["ephemeral_key"]),
            evidence=hashlib.sha256(b"whatever").hexdigest(), sealed=base64.b64decode(sealed))
        return answer({"sealed": sealed, "version": body["version"], "key_id": rogue.key_id,
                       "signature": base64.b64encode(rogue.sign(statement)).decode()})

    with pytest.raises(KbsError) as err:
        fetch_through(live, authority, forge)
    assert err.value.code == "kbs.answer_unauthenticated"


def test_a_refusal_turned_into_a_forged_release_is_refused(
        live_factory: LiveFactory, authority: sim.SimAuthority) -> None:
    """The real broker refuses (wrong measurement); the relay answers 200 with its own key."""
    served = live_factory(sim_roots=(authority.root_fingerprint,))
    provision(served.url, served.token("vendor"), secret=SECRET,
              policy=sim_policy(measurement=b"\x01" * 48))

    def forge(req: dict[str, Any], body: dict[str, Any], real: httpx.Response) -> httpx.Response:
        assert real.status_code == 403  # the broker said no
        return answer({"sealed": plant(req, 1), "version": 1, "key_id": served.broker.signer.key_id,
                       "signature": base64.b64encode(bytes(64)).decode()})

    with pytest.raises(KbsError) as err:
        fetch_through(served, authority, forge)
    assert err.value.code == "kbs.answer_unauthenticated"


@pytest.mark.parametrize("change", ["version", "no-signature", "no-key-id", "short-signature",
                                    "not-base64"])
def test_every_field_of_the_answer_is_covered(live: Live, authority: sim.SimAuthority,
                                              change: str) -> None:
    with OwnerClient(live.url, live.token("vendor")) as owner:
        owner.rotate(RESOURCE, b"r" * 32)  # two versions exist: "version" names a real other

    def forge(req: dict[str, Any], body: dict[str, Any], real: httpx.Response) -> httpx.Response:
        forged = dict(body)
        if change == "version":
            forged["version"] = body["version"] - 1
        elif change == "no-signature":
            forged.pop("signature")
        elif change == "no-key-id":
            forged.pop("key_id")
        elif change == "short-signature":
            forged["signature"] = base64.b64encode(base64.b64decode(body["signature"])[:63]).decode()
        else:
            forged["signature"] = "!" + body["signature"][1:]
        return answer(forged)

    with pytest.raises(KbsError) as err:
        fetch_through(live, authority, forge)
    assert err.value.code == "kbs.answer_unauthenticated"


def test_an_answer_to_another_request_is_refused(live: Live, authority: sim.SimAuthority) -> None:
    """A genuine signed answer, replayed to a later request: nonce and ephemeral key differ."""
    kept: list[dict[str, Any]] = []

    def keep(req: dict[str, Any], body: dict[str, Any], real: httpx.Response) -> httpx.Response:
        kept.append(body)
        return answer(kept[0])

    with relay(live, keep) as http:
        client = KbsClient(live.url, sim_attester(authority), trusted=trusting(live.broker),
                           http=http)
        assert client.fetch(RESOURCE) == SECRET
        with pytest.raises(KbsError) as err:
            client.fetch(RESOURCE)
    assert err.value.code == "kbs.answer_unauthenticated"


def test_answers_from_an_untrusted_broker_are_refused(live: Live, authority: sim.SimAuthority
                                                      ) -> None:
    """A genuine broker the enclave was not configured to trust (the operator's own)."""
    other = TrustedBrokers.of([BrokerSigner.generate().public_key])
    with KbsClient(live.url, sim_attester(authority), trusted=other) as client, \
            pytest.raises(KbsError) as err:
        client.fetch(RESOURCE)
    assert err.value.code == "kbs.answer_unauthenticated"


def test_the_evidence_states_the_trusted_broker_keys(live: Live, authority: sim.SimAuthority
                                                     ) -> None:
    seen: list[dict[str, Any]] = []

    def spy(req: dict[str, Any], body: dict[str, Any], real: httpx.Response) -> httpx.Response:
        seen.append(req["evidence"]["runtime"])
        return answer(body)

    fetch_through(live, authority, spy)
    assert seen[0]["kbs_keys"] == [hashlib.sha256(live.broker.signer.public_key).hexdigest()]


def test_an_enclave_trusting_no_broker_is_refused_at_construction() -> None:
    with pytest.raises(InputError) as err:
        TrustedBrokers(())
    assert err.value.code == "config.invalid"
    with pytest.raises(InputError):
        TrustedBrokers.of(["not a key"])
    with pytest.raises(InputError):  # a runtime naming other keys than those pinned
        KbsClient("http://127.0.0.1:9", sim_attester(sim.SimAuthority.create()),
                  trusted=TrustedBrokers.of([bytes(32)]), runtime={"kbs_keys": ["ab" * 32]})


# --- release policies naming the broker --------------------------------------------------------


def test_a_release_policy_can_require_its_broker(live_factory: LiveFactory,
                                                 authority: sim.SimAuthority) -> None:
    served = live_factory(sim_roots=(authority.root_fingerprint,))
    mine = served.broker.signer.key_id
    policy = sim_policy()
    required = policy.model_copy(update={"appraisal": policy.appraisal.model_copy(
        update={"kbs_keys": (mine,)})})
    provision(served.url, served.token("vendor"), secret=SECRET, policy=required)
    with KbsClient(served.url, sim_attester(authority), trusted=trusting(served.broker)) as c:
        assert c.fetch(RESOURCE) == SECRET
    # An enclave that also trusts the operator's broker is not released the key.
    both = TrustedBrokers.of([served.broker.signer.public_key, BrokerSigner.generate().public_key])
    with KbsClient(served.url, sim_attester(authority), trusted=both) as c, \
            pytest.raises(PolicyError) as err:
        c.fetch(RESOURCE)
    assert err.value.code == "policy.kbs_key_not_allowed"


# --- the signed statement: a format we define, pinned ------------------------------------------

SEED = bytes(range(32))
KAT_STATEMENT = (
    b'{"ephemeral_key":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",'
    b'"evidence":"abababababababababababababababababababababababababababababababab",'
    b'"nonce":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",'
    b'"resource":"kbs:///vendor/model-key/llama",'
    b'"sealed":"c9d0036bed6744bcdf692fc980d8717d7e5f5a4f4e8266b4a84982602fb1cd09",'
    b'"type":"medclave-kbs-release/v1","version":3}'
)
KAT_PUBLIC = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
KAT_KEY_ID = "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
KAT_SIGNATURE = ("7b2534bf730a1706d4f128a9042a27375ba045b2ae8edbea6f1bcc01248fc7a6"
                 "28ff468b22c47aa1e8cb8e72d71b04062ac0ef62f6b9389999b8cf59b145fc07")


def test_release_statement_known_answer() -> None:
    assert hashlib.sha256(b"sealed").hexdigest() in KAT_STATEMENT.decode()
    statement = release_statement(resource="kbs:///vendor/model-key/llama", version=3,
                                  nonce=bytes(range(32)), ephemeral_key=bytes([7] * 32),
                                  evidence="ab" * 32, sealed=b"sealed")
    assert statement == KAT_STATEMENT
    signer = BrokerSigner.from_seed(base64.b64encode(SEED).decode(), where="test")
    assert signer.public_key.hex() == KAT_PUBLIC
    assert signer.key_id == KAT_KEY_ID == hashlib.sha256(bytes.fromhex(KAT_PUBLIC)).hexdigest()
    assert fingerprint(bytes.fromhex(KAT_PUBLIC)) == KAT_KEY_ID
    assert signer.sign(KAT_STATEMENT).hex() == KAT_SIGNATURE  # Ed25519 is deterministic


def test_release_statement_known_answer_verifies_and_its_twin_does_not() -> None:
    trusted = TrustedBrokers.of([KAT_PUBLIC])
    signature = base64.b64encode(bytes.fromhex(KAT_SIGNATURE)).decode()
    trusted.verify(KAT_KEY_ID, signature, KAT_STATEMENT)
    flipped = bytearray(bytes.fromhex(KAT_SIGNATURE))
    flipped[10] ^= 1
    with pytest.raises(KbsError) as err:
        trusted.verify(KAT_KEY_ID, base64.b64encode(bytes(flipped)).decode(), KAT_STATEMENT)
    assert err.value.code == "kbs.answer_unauthenticated"
    with pytest.raises(KbsError):
        trusted.verify(KAT_KEY_ID, signature, KAT_STATEMENT.replace(b'"version":3', b'"version":4'))
