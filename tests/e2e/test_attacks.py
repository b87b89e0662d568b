"""An active operator between client and enclave: a relay that records and rewrites bytes.

Every attack must be refused, and refused before any prompt leaves the client when it concerns
the attestation (the relay's recording shows no encapsulated request at all).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from medclave.client import MedclaveClient
from medclave.client.session import EnclaveSession
from medclave.crypto.ohttp import OhttpKeyPair
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.errors import AttestationError, CryptoError, PolicyError
from tests.conftest import flip
from tests.e2e.helpers import (
    FAKE_ANSWER,
    Enclave,
    Exchange,
    FakeEngine,
    Idp,
    Relay,
    make_idp,
    now,
    sim_policy,
    start_enclave,
)

PROMPT = "Patient Jane Roe, MRN 4471-22, reports chest pain radiating to the left arm."


@pytest.fixture(scope="module")
def spy() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def fake_enclave(tmp_path_factory: pytest.TempPathFactory, spy: FakeEngine
                 ) -> Iterator[tuple[Enclave, Idp]]:
    folder = tmp_path_factory.mktemp("attacks")
    idp = make_idp(folder)
    enclave = start_enclave(folder / "enclave", idp, engine=spy)
    yield enclave, idp
    enclave.stop()


@pytest.fixture
def parts(fake_enclave: tuple[Enclave, Idp], spy: FakeEngine) -> Iterator[tuple[Enclave, Idp, Relay]]:
    enclave, idp = fake_enclave
    spy.calls.clear()
    with Relay(enclave.url) as relay:
        yield enclave, idp, relay


def _client(relay: Relay, enclave: Enclave, idp: Idp, **kw: object) -> MedclaveClient:
    policy = kw.pop("policy", sim_policy())
    return MedclaveClient(relay.url, policy=policy, api_key=idp.token,  # type: ignore[arg-type]
                          sim_roots=[enclave.sim_root], **kw)  # type: ignore[arg-type]


def _ask(client: MedclaveClient, **kw: object) -> str:
    done = client.chat.completions.create(model=DEFAULT_MODEL_ID, max_tokens=8,
                                          messages=[{"role": "user", "content": PROMPT}], **kw)
    return done.choices[0].message.content or ""


def _no_prompt_left(relay: Relay) -> None:
    assert relay.posts() == []
    assert PROMPT.encode() not in relay.recording()


def test_the_honest_path_works_and_carries_only_ciphertext(parts: tuple[Enclave, Idp, Relay],
                                                           spy: FakeEngine) -> None:
    enclave, idp, relay = parts
    tokens: list[str] = []
    with MedclaveClient(relay.url, policy=sim_policy(),
                        api_key=lambda: (tokens.append(idp.token()), tokens[-1])[1],
                        sim_roots=[enclave.sim_root]) as client:
        assert _ask(client) == FAKE_ANSWER
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": PROMPT}], stream=True)
            if c.choices)
        assert streamed == FAKE_ANSWER
        assert client.last_receipt is not None
    assert spy.calls == ["chat", "chat_stream"]
    recording = relay.recording()
    assert len(tokens) == 2
    for secret in (PROMPT, "4471-22", FAKE_ANSWER, "seventeen", *tokens):
        assert secret.encode() not in recording


def test_flipping_any_request_ciphertext_byte_is_refused(parts: tuple[Enclave, Idp, Relay],
                                                         spy: FakeEngine) -> None:
    enclave, idp, relay = parts
    body = json.dumps({"messages": [{"role": "user", "content": PROMPT}]}).encode()
    with _client(relay, enclave, idp) as client:
        session = client.session
        session.attest()  # only the encapsulated request is altered below
        sizes: list[int] = []
        relay.on_request = lambda e, b: (sizes.append(len(b)), b)[1] if e.method == "POST" else b
        assert session.request("POST", "/v1/chat/completions", body=body,
                               authorization=f"Bearer {idp.token()}").status == 200
        for offset in range(sizes[0]):
            relay.on_request = (lambda off: lambda e, b: flip(b, off % len(b))
                                if e.method == "POST" else b)(offset)
            with pytest.raises(CryptoError) as caught:
                session.request("POST", "/v1/chat/completions", body=body,
                                authorization=f"Bearer {idp.token()}")
            # header bytes name an unknown key or suite; the rest fails authentication
            assert caught.value.code in ("crypto.decrypt_failed", "crypto.key_unknown",
                                         "crypto.unsupported_suite")
    assert sizes[0] > 500
    assert spy.calls == ["chat"]  # only the honest request reached the engine


def test_flipping_any_response_ciphertext_byte_is_refused(parts: tuple[Enclave, Idp, Relay]
                                                          ) -> None:
    enclave, idp, relay = parts
    with _client(relay, enclave, idp) as client:
        client.attestation  # noqa: B018
        for offset in range(0, 400, 7):
            relay.on_response = (lambda off: lambda e, b: flip(b, off % len(b))
                                 if e.method == "POST" else b)(offset)
            with pytest.raises(CryptoError) as caught:
                client.session.request("GET", "/v1/models", authorization=f"Bearer {idp.token()}")
            assert caught.value.code == "crypto.decrypt_failed"


def test_a_cut_or_altered_stream_is_refused(parts: tuple[Enclave, Idp, Relay]) -> None:
    enclave, idp, relay = parts
    with _client(relay, enclave, idp) as client:
        client.attestation  # noqa: B018
        for tamper, code in ((lambda b: b[:40], "crypto.truncated"),  # final chunk gone
                             (lambda b: b[:-5], "crypto.decrypt_failed"),  # final chunk cut
                             (lambda b: flip(b, len(b) // 2), "crypto.decrypt_failed")):
            relay.on_response = (lambda t: lambda e, b: t(b) if e.method == "POST" else b)(tamper)
            with pytest.raises(CryptoError) as caught:
                list(client.chat.completions.create(
                    model=DEFAULT_MODEL_ID, messages=[{"role": "user", "content": PROMPT}],
                    stream=True))
            assert caught.value.code == code


def _swap_key(exchange: Exchange, body: bytes) -> bytes:
    if not exchange.path.startswith("/v1/attestation"):
        return body
    bundle = json.loads(body)
    attacker = OhttpKeyPair.generate(1)
    bundle["runtime"]["ohttp_key_config"] = base64.b64encode(attacker.config.encode()).decode()
    return json.dumps(bundle).encode()


def test_a_key_not_bound_in_the_evidence_is_refused_before_anything_is_sent(
        parts: tuple[Enclave, Idp, Relay], spy: FakeEngine) -> None:
    enclave, idp, relay = parts
    relay.on_response = _swap_key
    with _client(relay, enclave, idp) as client, pytest.raises(AttestationError) as caught:
        _ask(client)
    assert caught.value.code == "attestation.binding_mismatch"
    _no_prompt_left(relay)
    assert spy.calls == []


def test_another_enclaves_evidence_is_refused(parts: tuple[Enclave, Idp, Relay],
                                              tmp_path: Path) -> None:
    """The relay answers the attestation from an enclave the operator controls (its own sim
    root): the client pinned another root, so nothing is sent."""
    enclave, idp, relay = parts
    rogue = start_enclave(tmp_path / "rogue", None, engine=FakeEngine("rogue"))
    try:
        with Relay(rogue.url) as rogue_relay:
            honest = _client(relay, enclave, idp)
            session = EnclaveSession(rogue_relay.url, sim_policy(),
                                     sim_roots=frozenset({enclave.sim_root}))
            with pytest.raises(AttestationError) as caught:
                session.attest()
            assert caught.value.code == "attestation.root_untrusted"
            assert rogue_relay.posts() == []
            honest.close()
            session.close()
    finally:
        rogue.stop()


def test_a_stale_attestation_is_refused(parts: tuple[Enclave, Idp, Relay]) -> None:
    enclave, idp, relay = parts
    first: list[bytes] = []

    def replay(exchange: Exchange, body: bytes) -> bytes:
        if not exchange.path.startswith("/v1/attestation"):
            return body
        if not first:
            first.append(body)
            return body
        return first[0]  # a genuine answer, to an earlier nonce

    relay.on_response = replay
    with _client(relay, enclave, idp) as client:
        client.session.attest()
        with pytest.raises(AttestationError) as caught:
            client.session.attest()
    assert caught.value.code == "attestation.nonce_mismatch"
    _no_prompt_left(relay)


@pytest.mark.parametrize(("policy", "code"), [
    (sim_policy(measurement="00" * 48), "attestation.measurement_mismatch"),
    (sim_policy(model_digest="ab" * 32), "policy.model_not_allowed"),
    (sim_policy(platforms=("sev-snp", "tdx")), "policy.platform_not_allowed"),
])
def test_a_policy_mismatch_is_refused_before_any_prompt_leaves(
        parts: tuple[Enclave, Idp, Relay], spy: FakeEngine, policy: object, code: str) -> None:
    enclave, idp, relay = parts
    with _client(relay, enclave, idp, policy=policy) as client:
        with pytest.raises(PolicyError) as caught:
            _ask(client)
        assert caught.value.code == code
    _no_prompt_left(relay)
    assert len(relay.attestations()) == 1
    assert spy.calls == []


def test_sim_is_refused_without_its_pinned_root(parts: tuple[Enclave, Idp, Relay]) -> None:
    _, idp, relay = parts
    with MedclaveClient(relay.url, policy=sim_policy(), api_key=idp.token) as client, \
            pytest.raises(AttestationError) as caught:
        _ask(client)
    assert caught.value.code == "attestation.root_untrusted"
    _no_prompt_left(relay)


def test_key_rotation_makes_the_client_reattest_and_retry(parts: tuple[Enclave, Idp, Relay]
                                                          ) -> None:
    enclave, idp, relay = parts
    keys = enclave.booted.service.keys
    with _client(relay, enclave, idp) as client:
        old = client.attestation.key_config
        keys._grace = timedelta(0)  # the old key stops working at once
        keys.rotate()
        assert _ask(client) == FAKE_ANSWER
        assert client.attestation.key_config != old
        assert client.attestation.key_config == keys.config
    codes = [json.loads(e.response_body)["error"]["code"] for e in relay.posts()
             if e.status != 200]
    assert codes == ["crypto.key_unknown"]
    assert len(relay.attestations()) == 2


def test_the_client_reattests_on_schedule(parts: tuple[Enclave, Idp, Relay]) -> None:
    enclave, idp, relay = parts
    moments = [now()]
    with _client(relay, enclave, idp, clock=lambda: moments[-1],
                 reattest_after=timedelta(minutes=5)) as client:
        _ask(client)
        _ask(client)
        assert len(relay.attestations()) == 1
        moments.append(moments[0] + timedelta(minutes=6))
        _ask(client)
    assert len(relay.attestations()) == 2


def test_a_request_without_a_valid_token_never_reaches_the_engine(
        parts: tuple[Enclave, Idp, Relay], spy: FakeEngine) -> None:
    enclave, idp, relay = parts
    cases = [(None, "auth.token_missing"), ("Bearer x.y.z", "auth.token_malformed"),
             (f"Bearer {idp.token(roles=('researcher',))}", "auth.forbidden"),
             (f"Bearer {idp.token(tenant='other-hospital')}", "auth.issuer_untrusted")]
    with _client(relay, enclave, idp) as client:
        for authorization, code in cases:
            answer = client.session.request("POST", "/v1/chat/completions", body=json.dumps(
                {"messages": [{"role": "user", "content": PROMPT}]}).encode(),
                authorization=authorization)
            assert answer.status in (401, 403)
            assert json.loads(answer.body)["error"]["code"] == code
        assert client.session.request("POST", "/v1/chat/completions", body=json.dumps(
            {"messages": [{"role": "user", "content": PROMPT}]}).encode(),
            authorization=f"Bearer {idp.token()}").status == 200
    assert spy.calls == ["chat"]
