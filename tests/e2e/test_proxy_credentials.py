"""Issue 10, items 1, 2 and the proxy side of 5, end to end with the official ``openai`` client:
app -> proxy (API keys, IdP client, SSO header, DPoP) -> recording relay -> enclave (spy engine)
and the dev IdP, every server on 127.0.0.1.

The model's output does not matter here, so the engine is a spy; the token refresh is driven by
the proxy's clock and observed through the IdP's counters, never by waiting.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.auth.dpop import create_dpop_proof
from medclave.auth.exchange import GRANT_TYPE
from medclave.auth.idp_server import build_service
from medclave.auth.issuer import Directory, TokenService
from medclave.background import BackgroundServer, running
from medclave.client.admission import AdmissionConfig, build_admission
from medclave.client.apikeys import ApiKeyStore
from medclave.client.callers import Callers
from medclave.client.credentials import Credentials, IdpClientConfig
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.crypto.jose import jwk_thumbprint
from medclave.enclave.engines.base import ChatMessage, Delta, SamplingParams
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.util.clock import system_clock
from tests.e2e.helpers import (
    FAKE_ANSWER,
    TENANT,
    Enclave,
    FakeEngine,
    Idp,
    Relay,
    now,
    sim_policy,
    start_enclave,
)

SECRET = "proxy client secret 2024"
MESSAGES = [{"role": "user", "content": "Creatinine 180 umol/L: adjust the dose?"}]
HOLD = "hold this stream"


class GatedEngine(FakeEngine):
    """The spy engine; a stream whose prompt says HOLD waits for ``gate`` before it ends."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        held = any(HOLD in str(m.get("content")) for m in messages)
        inner = super().chat_stream(messages, params)

        def deltas() -> Iterator[Delta]:
            if held:
                self.gate.wait(30)
            yield from inner
        return deltas()


class Clock:
    """The proxy's clock for renewal decisions (tokens and proofs keep real time)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class World:
    idp_url: str
    idp: TokenService
    enclave: Enclave
    engine: GatedEngine
    data: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("creds")
    d = Directory(folder / "idp")
    d.add_client("proxy", SECRET, tenant=TENANT, roles=[], act_for_users=True)
    d.add_user("dr-alice", None, tenant=TENANT, roles=["clinician"])
    d.add_user("dr-bob", SECRET, tenant=TENANT, roles=["clinician"])
    d.add_user("nurse-nora", None, tenant=TENANT, roles=["clinician"])
    engine = GatedEngine()
    with running(lambda url: build_service(folder / "idp", issuer=url, dev_password=True)
                 ) as (url, service):
        jwks = folder / "jwks.json"
        jwks.write_text(json.dumps(service.issuer.jwks()))
        enclave = start_enclave(folder / "enclave", Idp(service.issuer, jwks), engine=engine,
                                auth_issuer=url)
        try:
            yield World(url, service, enclave, engine, folder / "proxy")
        finally:
            enclave.stop()


@dataclass
class Proxy:
    url: str
    relay: Relay
    clock: Clock
    keys: ApiKeyStore


def _proxy(world: World, *, direct: bool = False, **kw: object) -> Iterator[Proxy]:
    """A proxy with the IdP client and API keys, to the enclave through the recording relay
    (``direct``: straight to the enclave, for streams the relay would buffer whole)."""
    clock = Clock()
    keys = ApiKeyStore(world.data)
    credentials = Credentials(IdpClientConfig(token_url=f"{world.idp_url}/token",
                                              client_id="proxy", client_secret=SECRET),
                              clock=clock)
    trusted = tuple(kw.pop("trusted_proxies", ()))  # type: ignore[call-overload]
    callers = Callers(credentials=credentials, keys=keys, trusted_proxies=trusted,
                      identity_header=kw.pop("identity_header", None))  # type: ignore[arg-type]
    with Relay(world.enclave.url) as relay:
        session = EnclaveSession(world.enclave.url if direct else relay.url, sim_policy(),
                                 sim_roots=frozenset({world.enclave.sim_root}))
        app = create_proxy_app(session, callers=callers, trusted_proxies=trusted,
                               **kw)  # type: ignore[arg-type]
        with BackgroundServer(app, name="test-proxy") as server:
            yield Proxy(server.url, relay, clock, keys)
        session.close()
        callers.close()


@pytest.fixture
def proxy(world: World) -> Iterator[Proxy]:
    world.engine.calls.clear()
    yield from _proxy(world)


def _app(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def _ask(client: openai.OpenAI, content: str = MESSAGES[0]["content"]) -> str:
    done = client.chat.completions.create(model=DEFAULT_MODEL_ID, max_tokens=8,
                                          messages=[{"role": "user", "content": content}])
    return done.choices[0].message.content or ""


EXCHANGE = GRANT_TYPE


def test_one_api_key_for_50_requests_across_token_refreshes(world: World, proxy: Proxy) -> None:
    """Before: the second request with the same credential was 401 auth.token_replayed, and
    the app had to fetch tokens itself. Now one key serves an app across token lifetimes."""
    key, _ = proxy.keys.add(subject="dr-alice", roles=["clinician"])
    client = _app(proxy, key)
    issued = world.idp.issued.copy()
    for i in range(50):
        if i in (20, 40):
            proxy.clock.offset += timedelta(minutes=4, seconds=10)  # past 80% of 5 minutes
        if i % 10 == 5:
            assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_ID]
        elif i % 10 == 7:
            chunks = list(client.chat.completions.create(
                model=DEFAULT_MODEL_ID, max_tokens=8, messages=MESSAGES, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices
                           ) == FAKE_ANSWER
        else:
            assert _ask(client) == FAKE_ANSWER
    exchanges = world.idp.issued[EXCHANGE] - issued[EXCHANGE]
    assert exchanges == 3  # the first token, then one renewal at each step past 80%
    assert world.idp.issued["client_credentials"] - issued["client_credentials"] == 3
    assert len(world.engine.calls) == 45
    # The API key never left the hospital: the operator's network saw none of it.
    assert key.encode() not in proxy.relay.recording()
    assert key.split("_")[-1].encode() not in proxy.relay.recording()


def test_a_revoked_key_is_refused_with_a_bearer_challenge(world: World, proxy: Proxy) -> None:
    key, record = proxy.keys.add(subject="dr-alice", roles=["clinician"])
    client = _app(proxy, key)
    assert _ask(client) == FAKE_ANSWER
    assert ApiKeyStore(world.data).revoke(record.key_id)  # as `medclave proxy keys revoke`
    with pytest.raises(openai.AuthenticationError) as refused:
        _ask(client)
    assert refused.value.status_code == 401 and refused.value.code == "auth.invalid_credentials"
    raw = httpx.post(f"{proxy.url}/v1/chat/completions", json={"messages": MESSAGES},
                     headers={"Authorization": f"Bearer {key}"})
    assert raw.status_code == 401
    assert raw.headers["www-authenticate"].startswith('Bearer realm="medclave"')
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx.get(f"{proxy.url}/v1/models")  # no credential at all: the enclave's 401
    assert missing.status_code == 401 and "www-authenticate" in missing.headers
    assert len(world.engine.calls) == 1


def test_a_key_for_a_user_the_directory_does_not_know_is_forbidden(proxy: Proxy) -> None:
    key, _ = proxy.keys.add(subject="dr-mallory", roles=["clinician"])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _ask(_app(proxy, key))
    assert refused.value.code == "auth.forbidden"
    escalate, _ = proxy.keys.add(subject="dr-alice", roles=["admin"])
    with pytest.raises(openai.PermissionDeniedError):
        _ask(_app(proxy, escalate))


def test_the_apps_own_jwt_is_still_forwarded(world: World, proxy: Proxy) -> None:
    token = world.idp.issuer.issue(sub="dr-alice", tenant=TENANT, roles=["clinician"], now=now())
    client = _app(proxy, token)
    assert _ask(client) == FAKE_ANSWER and _ask(client) == FAKE_ANSWER


def test_errors_have_the_openai_shape(world: World, proxy: Proxy) -> None:
    key, _ = proxy.keys.add(subject="dr-alice", roles=["clinician"])
    client = _app(proxy, key)
    with pytest.raises(openai.NotFoundError) as missing:
        client.post("/no-such-endpoint", cast_to=object, body={})
    assert missing.value.code == "input.no_route"
    with pytest.raises(openai.APIStatusError) as method:
        client.delete("/chat/completions", cast_to=object)
    assert method.value.status_code == 405 and method.value.code == "input.method_not_allowed"
    huge = "x" * (1024 * 1024 + 1)
    with pytest.raises(openai.APIStatusError) as big:
        _ask(client, huge)
    assert big.value.status_code == 413 and big.value.code == "input.too_large"
    for response, status in ((httpx.get(f"{proxy.url}/v1/nothing"), 404),
                             (httpx.put(f"{proxy.url}/v1/chat/completions"), 405),
                             (httpx.post(f"{proxy.url}/v1/completions", content=b"{" * 10,
                                         headers={"Authorization": f"Bearer {key}"}), 400)):
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert "detail" not in response.json()
    assert httpx.put(f"{proxy.url}/v1/chat/completions").headers["allow"] == "POST"


def test_a_full_proxy_answers_429_with_retry_after(world: World) -> None:
    world.engine.gate.clear()
    for busy in _proxy(world, direct=True, max_in_flight=1):
        key, _ = busy.keys.add(subject="dr-alice", roles=["clinician"])
        client = _app(busy, key)
        held = client.chat.completions.create(
            model=DEFAULT_MODEL_ID, max_tokens=8, stream=True,
            messages=[{"role": "user", "content": HOLD}])
        try:
            with pytest.raises(openai.RateLimitError) as full:
                _ask(client)
            assert full.value.code == "client.busy"
            assert full.value.response.headers["retry-after"] == "1"
        finally:
            world.engine.gate.set()
            assert "".join(c.choices[0].delta.content or "" for c in held if c.choices
                           ) == FAKE_ANSWER
        assert _ask(client) == FAKE_ANSWER  # the slot came back when the stream ended


def test_the_sso_identity_header_is_believed_only_from_a_trusted_proxy(world: World) -> None:
    header = {"X-Forwarded-User": "nurse-nora"}
    for trusted in _proxy(world, identity_header="X-Forwarded-User",
                          trusted_proxies=("127.0.0.1",)):
        app = openai.OpenAI(base_url=f"{trusted.url}/v1", api_key="unused", max_retries=0,
                            default_headers=header)
        assert _ask(app) == FAKE_ANSWER
        # An SSO front that also writes X-Forwarded-For is still the peer that is believed.
        forwarded = httpx.post(f"{trusted.url}/v1/chat/completions",
                               json={"messages": MESSAGES, "max_tokens": 4},
                               headers={**header, "X-Forwarded-For": "203.0.113.9"})
        assert forwarded.status_code == 200, forwarded.text
    # The attack: a local app writes the header itself to become someone else.
    for untrusted in _proxy(world, identity_header="X-Forwarded-User",
                            trusted_proxies=("10.0.0.1",)):
        app = openai.OpenAI(base_url=f"{untrusted.url}/v1", api_key="unused", max_retries=0,
                            default_headers=header)
        with pytest.raises(openai.AuthenticationError) as refused:
            _ask(app)
        assert refused.value.code == "auth.invalid_credentials"
        assert untrusted.relay.exchanges == []  # refused before anything was attested


def test_an_apps_dpop_bound_token_works_through_the_proxy(world: World, proxy: Proxy) -> None:
    """Before: the app's proof named the proxy's URL and was not forwarded: 401 at the enclave.
    Now the proxy checks it for its own URL, then re-binds the token to its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    token_url = f"{world.idp_url}/token"
    got = httpx.post(token_url, data={"grant_type": "password", "username": "dr-bob",
                                      "password": SECRET},
                     headers={"DPoP": create_dpop_proof(key, method="POST", url=token_url,
                                                        now=now())})
    assert got.json()["token_type"] == "DPoP"
    token = got.json()["access_token"]
    url = f"{proxy.url}/v1/chat/completions"

    def call(proof: str) -> httpx.Response:
        return httpx.post(url, json={"messages": MESSAGES, "max_tokens": 4},
                          headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    proof = create_dpop_proof(key, method="POST", url=url, now=now(), access_token=token)
    first = call(proof)
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == FAKE_ANSWER
    again = call(proof)  # the same proof twice: RFC 9449 §11.1
    assert again.status_code == 401 and again.json()["error"]["code"] == "auth.dpop_invalid"
    elsewhere = create_dpop_proof(key, method="POST", url="https://other.example/v1/x",
                                  now=now(), access_token=token)
    assert call(elsewhere).json()["error"]["code"] == "auth.dpop_invalid"
    thief = create_dpop_proof(ec.generate_private_key(ec.SECP256R1()), method="POST", url=url,
                              now=now(), access_token=token)
    assert call(thief).json()["error"]["code"] == "auth.dpop_invalid"
    fresh = create_dpop_proof(key, method="POST", url=url, now=now(), access_token=token)
    assert call(fresh).status_code == 200
    # The token the app holds never crossed the operator's network either.
    assert token.encode() not in proxy.relay.recording()
    # An expired app token is a 401 the app understands, not the IdP's refusal.
    old = world.idp.issuer.issue(sub="dr-bob", tenant=TENANT, roles=["clinician"],
                                 now=now() - timedelta(minutes=10),
                                 jkt=jwk_thumbprint(key.public_key()))
    stale = httpx.post(url, json={"messages": MESSAGES}, headers={
        "Authorization": f"DPoP {old}",
        "DPoP": create_dpop_proof(key, method="POST", url=url, now=now(), access_token=old)})
    assert stale.status_code == 401 and stale.json()["error"]["code"] == "auth.token_expired"


def test_admission_checks_the_token_the_proxy_obtained(world: World, tmp_path: Path) -> None:
    """With admission on, the per-user token and the proxy's own proof pass the proxy's coarse
    check and then, separately, the enclave's (each keeps its own proof replay cache)."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(world.idp.issuer.jwks()))
    admission = build_admission(AdmissionConfig(issuer=world.idp_url, jwks_file=jwks,
                                                tenant=TENANT), clock=system_clock)
    for admitted in _proxy(world, admission=admission):
        key, _ = admitted.keys.add(subject="dr-alice", roles=["clinician"])
        client = _app(admitted, key)
        assert _ask(client) == FAKE_ANSWER and _ask(client) == FAKE_ANSWER
        assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_ID]
        researcher, _ = admitted.keys.add(subject="dr-alice", roles=["researcher"])
        with pytest.raises(openai.PermissionDeniedError):  # the IdP grants no such role
            _ask(_app(admitted, researcher))
        # Cedar at the proxy refuses a role the model does not allow, before any byte leaves.
        posts = len(admitted.relay.posts())
        world_roles = Directory(world.data.parent / "idp")
        world_roles.add_user("dr-dave", None, tenant=TENANT, roles=["billing"])
        billing, _ = admitted.keys.add(subject="dr-dave", roles=["billing"])
        with pytest.raises(openai.PermissionDeniedError) as refused:
            _ask(_app(admitted, billing))
        assert refused.value.code == "auth.forbidden"
        assert len(admitted.relay.posts()) == posts
    admission.close()
