"""The proxy's admission (issue 6, the coarse enforcement point), over real HTTP on 127.0.0.1.

A dev IdP (JWKS over HTTP), a real enclave on sim with a spy engine behind a recording relay, and
the proxy in front. A refused request must never reach the relay: no attestation, no ciphertext.
An admitted token is a bearer credential: the proxy's check and the enclave's both accept it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from medclave.auth.idp_server import build_service
from medclave.auth.issuer import TokenIssuer, TokenService, load_or_create_signing_key
from medclave.background import BackgroundServer, running
from medclave.cli import proxy as proxy_cli
from medclave.client import proxy as proxy_module
from medclave.client.admission import (
    UNNAMED_MODEL,
    AdmissionConfig,
    ProxyAdmission,
    build_admission,
    requested_model,
)
from medclave.client.proxy import create_proxy_app
from medclave.client.proxy_settings import ProxySettings
from medclave.client.session import EnclaveSession
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.errors import AuthError, InputError
from medclave.protocol import inference as proto
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

CHAT = {"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": "HbA1c 9.1%?"}],
        "max_tokens": 8}


@pytest.fixture(scope="module")
def idp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenService]]:
    folder = tmp_path_factory.mktemp("idp")
    with running(lambda url: build_service(folder, issuer=url)) as served:
        yield served


@pytest.fixture(scope="module")
def spy() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory, idp_server: tuple[str, TokenService],
            spy: FakeEngine) -> Iterator[Enclave]:
    url, service = idp_server
    folder = tmp_path_factory.mktemp("enclave")
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps(service.issuer.jwks()))
    e = start_enclave(folder / "data", Idp(service.issuer, jwks), engine=spy, auth_issuer=url)
    yield e
    e.stop()


@pytest.fixture
def relay(enclave: Enclave, spy: FakeEngine) -> Iterator[Relay]:
    spy.calls.clear()
    with Relay(enclave.url) as r:
        yield r


def _config(url: str, **kw: Any) -> AdmissionConfig:
    return AdmissionConfig(issuer=url, jwks_url=f"{url}/jwks.json", tenant=TENANT, **kw)


@pytest.fixture
def proxy(relay: Relay, enclave: Enclave, idp_server: tuple[str, TokenService]
          ) -> Iterator[str]:
    admission = build_admission(_config(idp_server[0]), clock=system_clock)
    session = EnclaveSession(relay.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))
    with BackgroundServer(create_proxy_app(session, admission), name="test-proxy") as server:
        yield server.url
    session.close()
    admission.close()


def token(service: TokenService, *, roles: tuple[str, ...] = ("clinician",),
          tenant: str = TENANT, **kw: Any) -> str:
    kw.setdefault("now", now())
    return service.issuer.issue(sub="dr-alice", tenant=tenant, roles=list(roles), **kw)


def chat(proxy: str, authorization: str | None, body: dict[str, Any] = CHAT,
         path: str = proto.CHAT_PATH) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return httpx.post(proxy + path, json=body, headers=headers, timeout=30)


def assert_never_left(proxy: str, relay: Relay, spy: FakeEngine) -> None:
    """Nothing was attested, encrypted or sent: the relay saw no byte, the engine no call."""
    assert relay.exchanges == [] and spy.calls == []
    assert httpx.get(f"{proxy}/medclave/status").json()["upstream_verified"] is False


def test_an_admitted_request_reaches_the_enclave_and_the_token_works_again(
        proxy: str, relay: Relay, spy: FakeEngine, idp_server: tuple[str, TokenService]) -> None:
    bearer = f"Bearer {token(idp_server[1])}"
    first = chat(proxy, bearer)
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == FAKE_ANSWER
    assert len(relay.attestations()) == 1 and spy.calls == ["chat"]
    # Issue 10: the same token, sent again, is admitted again and served again (RFC 6750: a
    # bearer token is reused until it expires); before, the enclave refused it as a replay.
    again = chat(proxy, bearer)
    assert again.status_code == 200, again.text
    assert len(relay.posts()) == 2 and spy.calls == ["chat", "chat"]


def test_models_listing_needs_a_token_of_this_tenant(
        proxy: str, relay: Relay, spy: FakeEngine, idp_server: tuple[str, TokenService]) -> None:
    service = idp_server[1]
    for auth, code in ((None, "auth.token_missing"),
                       (f"Bearer {token(service, tenant='other-hospital')}", "auth.forbidden")):
        r = httpx.get(proxy + proto.MODELS_PATH,
                      headers={} if auth is None else {"Authorization": auth})
        assert r.json()["error"]["code"] == code
    assert_never_left(proxy, relay, spy)
    listed = httpx.get(proxy + proto.MODELS_PATH,
                       headers={"Authorization": f"Bearer {token(service)}"})
    assert listed.status_code == 200 and len(relay.attestations()) == 1


def _bad_tokens(url: str, service: TokenService, tmp: Path) -> list[tuple[str | None, str]]:
    stranger = TokenIssuer(url, load_or_create_signing_key(tmp / "stranger"))
    elsewhere = TokenIssuer("https://idp.elsewhere.invalid", service.issuer.key)
    good = token(service)
    head, payload, signature = good.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    return [
        (None, "auth.token_missing"),
        ("Basic ZHI6YWxpY2U=", "auth.token_missing"),
        ("Bearer not-a-token", "auth.token_malformed"),
        (f"Bearer {head}.{payload}.{flipped}", "auth.signature_invalid"),
        (f"Bearer {token(service, audience='another-service')}", "auth.audience_mismatch"),
        (f"Bearer {token(service, now=now() - timedelta(minutes=20))}", "auth.token_expired"),
        (f"Bearer {stranger.issue(sub='x', tenant=TENANT, roles=['clinician'], now=now())}",
         "auth.key_unknown"),
        (f"Bearer {elsewhere.issue(sub='x', tenant=TENANT, roles=['clinician'], now=now())}",
         "auth.issuer_untrusted"),
        (f"Bearer {token(service, jkt='A' * 43)}", "auth.dpop_invalid"),
    ]


def test_bad_tokens_are_refused_with_401_before_anything_leaves(
        proxy: str, relay: Relay, spy: FakeEngine, idp_server: tuple[str, TokenService],
        tmp_path: Path) -> None:
    for authorization, code in _bad_tokens(*idp_server, tmp_path):
        for path, body in ((proto.CHAT_PATH, CHAT), (proto.CHAT_PATH, {**CHAT, "stream": True}),
                           (proto.COMPLETIONS_PATH, {"model": "m", "prompt": "x"})):
            r = chat(proxy, authorization, body, path)
            assert r.status_code == 401, (code, r.text)
            assert r.json()["error"]["code"] == code
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert_never_left(proxy, relay, spy)


@pytest.mark.parametrize("roles,tenant,reason", [
    (("researcher",), TENANT, "default deny"),  # no role allowed to call the model
    (("patient", "admin"), TENANT, "default deny"),
    (("clinician",), "other-hospital", "tenant-isolation"),  # another hospital's clinician
])
def test_cedar_refuses_other_roles_and_tenants_with_403(
        proxy: str, relay: Relay, spy: FakeEngine, idp_server: tuple[str, TokenService],
        roles: tuple[str, ...], tenant: str, reason: str) -> None:
    bearer = f"Bearer {token(idp_server[1], roles=roles, tenant=tenant)}"
    for body in (CHAT, {**CHAT, "stream": True}):
        r = chat(proxy, bearer, body)
        assert r.status_code == 403
        error = r.json()["error"]
        assert error["code"] == "auth.forbidden" and reason in error["message"]
    assert_never_left(proxy, relay, spy)


def test_the_official_client_sees_the_refusal(
        proxy: str, relay: Relay, spy: FakeEngine, idp_server: tuple[str, TokenService]) -> None:
    app = openai.OpenAI(base_url=f"{proxy}/v1", max_retries=0,
                        api_key=token(idp_server[1], roles=("researcher",)))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        app.chat.completions.create(model=DEFAULT_MODEL_ID, max_tokens=8,
                                    messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "auth.forbidden"
    assert_never_left(proxy, relay, spy)


def test_roles_are_configurable(enclave: Enclave, idp_server: tuple[str, TokenService]) -> None:
    url, service = idp_server
    admission: ProxyAdmission = build_admission(_config(url, roles=("researcher",)),
                                                clock=system_clock)
    try:
        who = admission.admit({"authorization": f"Bearer {token(service, roles=('researcher',))}"},
                              method="POST", path=proto.CHAT_PATH, body=json.dumps(CHAT).encode())
        assert who.roles == ("researcher",) and who.tenant == TENANT
        with pytest.raises(AuthError) as refused:
            admission.admit({"authorization": f"Bearer {token(service)}"}, method="POST",
                            path=proto.CHAT_PATH)
        assert refused.value.code == "auth.forbidden"
    finally:
        admission.close()


def test_admission_is_off_by_default(relay: Relay, enclave: Enclave, spy: FakeEngine) -> None:
    """Unmodified local apps work: the proxy forwards and the enclave alone decides."""
    session = EnclaveSession(relay.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))
    with BackgroundServer(create_proxy_app(session), name="test-proxy") as server:
        r = chat(server.url, None)
    session.close()
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth.token_missing"
    assert len(relay.posts()) == 1 and spy.calls == []  # refused inside the enclave


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("body,model", [
    (b'{"model": "smollm2"}', "smollm2"), (b"{}", UNNAMED_MODEL), (b"[1]", UNNAMED_MODEL),
    (b"\xff", UNNAMED_MODEL), (b'{"model": 7}', UNNAMED_MODEL),
    (b'{"model": "' + b"m" * 129 + b'"}', UNNAMED_MODEL), (b'{"model": "a\\nb"}', UNNAMED_MODEL),
])
def test_requested_model(body: bytes, model: str) -> None:
    assert requested_model(body) == model


def test_half_an_admission_configuration_is_refused(tmp_path: Path) -> None:
    base: dict[str, Any] = {"upstream": "http://127.0.0.1:9", "policy_file": tmp_path / "p"}
    assert ProxySettings(**base).admission() is None
    with pytest.raises(InputError) as e:
        ProxySettings(**base, auth_jwks_file=tmp_path / "jwks.json").admission()
    assert e.value.code == "config.invalid"
    for bad in ({}, {"jwks_file": tmp_path / "a", "jwks_url": "https://idp/jwks"},
                {"jwks_url": "https://idp/jwks", "roles": ()},
                {"jwks_url": "https://idp/jwks", "tenant": "no spaces"}):
        with pytest.raises(InputError):
            AdmissionConfig(issuer="https://idp", **bad)
    with pytest.raises(InputError):  # keys over plain HTTP to another host
        build_admission(AdmissionConfig(issuer="https://idp", jwks_url="http://idp.example/j"),
                        clock=system_clock)


def test_cli_flags_reach_the_settings_and_a_bad_jwks_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["sim"]\n')
    issuer = TokenIssuer("https://idp.test", load_or_create_signing_key(tmp_path / "idp"))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    seen: list[ProxySettings] = []
    monkeypatch.setattr(proxy_module, "serve", seen.append)
    runner = CliRunner()
    base = ["--upstream", "http://127.0.0.1:8443", "--policy", str(policy)]
    result = runner.invoke(proxy_cli.app, [*base, "--issuer", "https://idp.test",
                                           "--jwks", str(jwks), "--audience", "ward-7",
                                           "--tenant", TENANT, "--role", "clinician",
                                           "--role", "nurse"])
    assert result.exit_code == 0, result.output
    config = seen[0].admission()
    assert config is not None
    assert (config.issuer, config.jwks_file, config.audience, config.tenant, config.roles) == (
        "https://idp.test", jwks, "ward-7", TENANT, ("clinician", "nurse"))
    (tmp_path / "broken.json").write_text("{not json")
    for extra in (["--issuer", "https://idp.test", "--jwks", str(tmp_path / "broken.json")],
                  ["--jwks", str(jwks)]):
        refused = runner.invoke(proxy_cli.app, [*base, *extra])
        assert refused.exit_code == 2
        assert json.loads(refused.stdout)["error"]["code"] == "config.invalid"
    assert len(seen) == 1
