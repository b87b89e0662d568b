"""The proxy's credentials: tokens renewed at 80% of their life, one renewal at a time, failed
renewals retried with backoff while the token is still valid; and against the real dev IdP on
127.0.0.1: client credentials, token exchange, DPoP binding, refusals mapped for the app."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclave.auth.idp_server import build_service
from medclave.auth.issuer import Directory, TokenService
from medclave.auth.jwks import HttpJwks
from medclave.auth.tokens import IssuerConfig, TokenOptions, TokenVerifier
from medclave.background import running
from medclave.cli.main import app
from medclave.client.credentials import AccessToken, Credentials, IdpClientConfig, Refreshing
from medclave.client.proxy_settings import ProxySettings, callers_for
from medclave.errors import AuthError, ClientError, InputError, MedclaveError
from tests.e2e.helpers import now

SECRET = "proxy client secret 2024"


class Clock:
    def __init__(self) -> None:
        self.at = now()

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Fetcher:
    """A token source that counts its calls and can fail or block on demand."""

    def __init__(self, clock: Clock, lifetime: float = 100) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.calls = 0
        self.fail: MedclaveError | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self) -> AccessToken:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        t = self.clock()
        return AccessToken(f"t{self.calls}", False, expires=t + timedelta(seconds=self.lifetime),
                           refresh_at=t + timedelta(seconds=self.lifetime * 0.8))


def test_a_token_is_renewed_at_80_percent_of_its_life() -> None:
    clock = Clock()
    fetch = Fetcher(clock)
    holder = Refreshing(fetch, clock=clock)
    assert holder.get().value == "t1"
    clock.advance(79)
    assert holder.get().value == "t1" and fetch.calls == 1
    clock.advance(1)
    assert holder.get().value == "t2" and fetch.calls == 2


def test_a_failed_renewal_keeps_the_valid_token_and_backs_off() -> None:
    clock = Clock()
    fetch = Fetcher(clock)
    holder = Refreshing(fetch, clock=clock)
    holder.get()
    clock.advance(85)
    fetch.fail = ClientError("client.idp_unavailable")
    assert holder.get().value == "t1" and fetch.calls == 2  # tried, failed, still served
    assert holder.get().value == "t1" and fetch.calls == 2  # backing off: not tried again
    clock.advance(1)
    assert holder.get().value == "t1" and fetch.calls == 3  # after 1 s, tried again
    clock.advance(1)
    assert holder.get().value == "t1" and fetch.calls == 3  # now waits 2 s
    fetch.fail = None
    clock.advance(1)
    assert holder.get().value == "t4" and fetch.calls == 4
    # Once expired, a failure reaches the caller: never an expired token.
    clock.advance(100)
    fetch.fail = ClientError("client.idp_unavailable")
    with pytest.raises(ClientError):
        holder.get()


def test_retry_after_is_honoured() -> None:
    clock = Clock()
    fetch = Fetcher(clock)
    holder = Refreshing(fetch, clock=clock)
    holder.get()
    clock.advance(81)
    fetch.fail = AuthError("auth.rate_limited", retry_after=10)
    holder.get()
    clock.advance(9)
    holder.get()
    assert fetch.calls == 2
    clock.advance(1)
    holder.get()
    assert fetch.calls == 3


def test_one_renewal_in_flight_and_the_others_keep_the_current_token() -> None:
    clock = Clock()
    fetch = Fetcher(clock)
    holder = Refreshing(fetch, clock=clock)
    holder.get()
    clock.advance(90)
    fetch.gate = threading.Event()
    fetch.entered.clear()
    renewed: list[str] = []
    renewer = threading.Thread(target=lambda: renewed.append(holder.get().value))
    renewer.start()
    assert fetch.entered.wait(10)
    # While the renewal waits on the IdP, every other caller is served at once, no second call.
    assert [holder.get().value for _ in range(20)] == ["t1"] * 20
    assert fetch.calls == 2
    fetch.gate.set()
    renewer.join(10)
    assert renewed == ["t2"] and holder.get().value == "t2"


# --- against the dev IdP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenService]]:
    data = tmp_path_factory.mktemp("idp")
    d = Directory(data)
    d.add_client("proxy", SECRET, tenant="st-mary", roles=[], act_for_users=True)
    d.add_client("plain", SECRET, tenant="st-mary", roles=[])
    d.add_user("dr-alice", None, tenant="st-mary", roles=["clinician"])
    with running(lambda url: build_service(data, issuer=url)) as served:
        yield served


def credentials(url: str, client: str = "proxy", secret: str = SECRET, **kw: object
                ) -> Credentials:
    return Credentials(IdpClientConfig(token_url=f"{url}/token", client_id=client,
                                       client_secret=secret, **kw))  # type: ignore[arg-type]


def test_user_tokens_are_exchanged_bound_and_cached(idp: tuple[str, TokenService]) -> None:
    url, service = idp
    creds = credentials(url)
    before = service.issued.copy()
    token = creds.user_token("dr-alice", ("clinician",))
    assert token.bound and token.authorization().startswith("DPoP ")
    assert creds.user_token("dr-alice", ("clinician",)) is token  # cached until 80%
    assert service.issued["client_credentials"] - before["client_credentials"] == 1
    assert service.issued[
        "urn:ietf:params:oauth:grant-type:token-exchange"] - before[
        "urn:ietf:params:oauth:grant-type:token-exchange"] == 1
    verifier = TokenVerifier([IssuerConfig(issuer=url, keys=HttpJwks(issuer=url))],
                             TokenOptions(audiences=frozenset({"medclave"})))
    identity = verifier.verify(token.value, now=now())
    assert identity.subject == "dr-alice" and identity.confirmation_jkt is not None
    proof = creds.proof(token, "POST", "/v1/chat/completions")
    assert proof is not None
    creds.close()


def test_refusals_are_mapped_for_the_app(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    creds = credentials(url)
    for subject, roles in (("dr-nobody", ()), ("dr-alice", ("admin",))):
        with pytest.raises(AuthError) as refused:
            creds.user_token(subject, roles)
        assert refused.value.code == "auth.forbidden" and refused.value.status == 403
    # The proxy's own standing (a client not allowed to act, a wrong secret, no IdP at all)
    # is not the app's fault: 502.
    for broken in (credentials(url, "plain"), credentials(url, secret="wrong secret 12345"),
                   credentials("http://127.0.0.1:9")):
        with pytest.raises(ClientError) as down:
            broken.user_token("dr-alice")
        assert down.value.code == "client.idp_unavailable" and down.value.status == 502


def test_the_token_endpoint_must_be_https_or_loopback() -> None:
    with pytest.raises(InputError):
        IdpClientConfig(token_url="http://idp.example/token", client_id="p", client_secret="s")


# --- configuration --------------------------------------------------------------------------------


def _settings(tmp_path: Path, **kw: object) -> ProxySettings:
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["sim"]\n')
    return ProxySettings(upstream="http://127.0.0.1:9", policy_file=policy,
                         data_dir=tmp_path / "proxy", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("kw", [
    {"idp_token_url": "http://127.0.0.1:9/token"},
    {"idp_token_url": "http://127.0.0.1:9/token", "idp_client_id": "proxy"},
    {"identity_header": "X-Forwarded-User"},
    {"idp_token_url": "http://127.0.0.1:9/token", "idp_client_id": "proxy",
     "idp_client_secret": SECRET, "identity_header": "X-Forwarded-User"},  # no trusted proxy
    {"idp_token_url": "http://idp.example/token", "idp_client_id": "proxy",
     "idp_client_secret": SECRET},  # plain http off loopback
])
def test_half_a_credentials_setup_is_refused(tmp_path: Path, kw: dict[str, object]) -> None:
    with pytest.raises(InputError) as refused:
        callers_for(_settings(tmp_path, **kw)).close()
    assert refused.value.code == "config.invalid"


def test_a_full_setup_builds_and_the_cli_refuses_half_of_one(tmp_path: Path) -> None:
    callers_for(_settings(tmp_path, idp_token_url="http://127.0.0.1:9/token",
                          idp_client_id="proxy", idp_client_secret=SECRET,
                          identity_header="X-Forwarded-User",
                          trusted_proxies=("10.0.0.0/8",))).close()
    policy = tmp_path / "policy.toml"
    out = CliRunner().invoke(app, ["proxy", "--upstream", "http://127.0.0.1:9", "--policy",
                                   str(policy), "--idp-token-url", "http://127.0.0.1:9/token",
                                   "--data", str(tmp_path / "proxy")])
    assert out.exit_code == 2
    assert json.loads(out.stdout)["error"]["code"] == "config.invalid"
