"""Token exchange (RFC 8693) in the dev IdP, over real HTTP on 127.0.0.1: the strict rules.

Only a client allowed to act for users may exchange; the user must be in the directory and in
the client's tenant; roles stay within what the directory grants (and, for a user's own token,
within what it carried); the token lives at most 15 minutes (never longer than a user token it
replaces) and names the acting client in ``act``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from medclave.auth.authn import Authenticator
from medclave.auth.dpop import create_dpop_proof
from medclave.auth.exchange import ACCESS_TOKEN_TYPE, GRANT_TYPE, JWT_TOKEN_TYPE
from medclave.auth.idp_server import build_service
from medclave.auth.issuer import Directory, TokenService
from medclave.auth.jwks import HttpJwks
from medclave.auth.tokens import Identity, IssuerConfig, TokenOptions, TokenVerifier
from medclave.background import running
from medclave.cli import idp as idp_cli
from medclave.crypto.jose import jwk_thumbprint
from medclave.errors import AuthError
from medclave.util.clock import system_clock

SECRET = "proxy client secret 2024"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenService]]:
    data = tmp_path_factory.mktemp("idp")
    d = Directory(data)
    d.add_client("proxy", SECRET, tenant="st-mary", roles=["service"], act_for_users=True)
    d.add_client("plain", SECRET, tenant="st-mary", roles=["service"])
    d.add_client("north-proxy", SECRET, tenant="northside", roles=[], act_for_users=True)
    d.add_user("dr-alice", None, tenant="st-mary", roles=["clinician", "researcher"])
    d.add_user("dr-bob", SECRET, tenant="st-mary", roles=["clinician"])
    d.add_user("nurse-n", None, tenant="northside", roles=["clinician"])
    with running(lambda url: build_service(data, issuer=url, dev_password=True)) as served:
        yield served


def post(url: str, form: dict[str, str], **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/token", data=form, timeout=10, **kw)  # type: ignore[arg-type]


def client_token(url: str, client: str = "proxy") -> str:
    answer = post(url, {"grant_type": "client_credentials", "client_id": client,
                        "client_secret": SECRET})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def exchange(url: str, subject_token: str, client: str = "proxy", **extra: str
             ) -> httpx.Response:
    form = {"grant_type": GRANT_TYPE, "client_id": client, "client_secret": SECRET,
            "subject_token": subject_token, "subject_token_type": ACCESS_TOKEN_TYPE, **extra}
    return post(url, {k: v for k, v in form.items() if v != "-"})


def verify(url: str, token: str) -> Identity:
    a = Authenticator([IssuerConfig(issuer=url, keys=HttpJwks(issuer=url))],
                      TokenOptions(audiences=frozenset({"medclave"})), clock=system_clock)
    return a.require_identity({"Authorization": f"Bearer {token}"})


def refused(answer: httpx.Response, error: str, code: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error and answer.json()["code"] == code, answer.json()


def test_metadata_offers_token_exchange(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    meta = httpx.get(f"{url}/.well-known/openid-configuration", timeout=10).json()
    assert GRANT_TYPE in meta["grant_types_supported"]


def test_the_proxy_gets_a_token_for_a_user_it_authenticated(idp: tuple[str, TokenService]
                                                            ) -> None:
    url, _ = idp
    answer = exchange(url, client_token(url), requested_subject="dr-alice", scope="clinician")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900
    identity = verify(url, body["access_token"])
    assert (identity.subject, identity.tenant, identity.roles) == ("dr-alice", "st-mary",
                                                                   ("clinician",))
    assert identity.claims["act"] == {"sub": "proxy"} and identity.client_id == "proxy"
    assert identity.expires_at - identity.issued_at <= timedelta(minutes=15)
    # Without scope: the user's directory roles.
    everything = exchange(url, client_token(url), requested_subject="dr-alice")
    assert verify(url, everything.json()["access_token"]).roles == ("clinician", "researcher")


def test_a_client_not_allowed_to_act_for_users_cannot_exchange(idp: tuple[str, TokenService]
                                                               ) -> None:
    url, _ = idp
    refused(exchange(url, client_token(url, "plain"), client="plain",
                     requested_subject="dr-alice"), "unauthorized_client",
            "auth.exchange_forbidden")


def test_roles_beyond_the_directory_are_refused(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    refused(exchange(url, client_token(url), requested_subject="dr-alice",
                     scope="clinician admin"), "invalid_scope", "auth.scope_exceeded")


def test_users_of_another_tenant_and_unknown_users_are_refused(idp: tuple[str, TokenService]
                                                               ) -> None:
    url, _ = idp
    refused(exchange(url, client_token(url), requested_subject="nurse-n"),
            "unauthorized_client", "auth.exchange_forbidden")
    refused(exchange(url, client_token(url), requested_subject="dr-nobody"),
            "invalid_request", "auth.exchange_subject_invalid")
    refused(exchange(url, client_token(url)), "invalid_request", "auth.exchange_subject_invalid")


def test_the_subject_token_must_be_a_valid_token_of_this_idp(idp: tuple[str, TokenService]
                                                             ) -> None:
    url, _ = idp
    own = client_token(url)
    head, payload, sig = own.split(".")
    forged = f"{head}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    refused(exchange(url, forged, requested_subject="dr-alice"), "invalid_request",
            "auth.exchange_subject_invalid")
    # Another client's token names no user, and cannot be turned into one.
    refused(exchange(url, client_token(url, "plain"), requested_subject="dr-alice"),
            "invalid_request", "auth.exchange_subject_invalid")
    # An actor token or another token type is refused, never ignored.
    refused(exchange(url, own, requested_subject="dr-alice", actor_token=own,
                     actor_token_type=ACCESS_TOKEN_TYPE), "invalid_request", "input.malformed")
    refused(exchange(url, own, requested_subject="dr-alice",
                     subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
            "invalid_request", "input.malformed")
    assert exchange(url, own, requested_subject="dr-alice",
                    subject_token_type=JWT_TOKEN_TYPE).status_code == 200


def test_a_users_own_token_is_rebound_to_the_proxys_key_never_widened(
        idp: tuple[str, TokenService]) -> None:
    """An app's token (here from the password grant) exchanged by the proxy with its own DPoP
    proof: same user, no more roles, no later expiry, bound to the proxy's key."""
    url, _ = idp
    users = post(url, {"grant_type": "password", "username": "dr-bob", "password": SECRET})
    user_token = users.json()["access_token"]
    original = verify(url, user_token)
    key = ec.generate_private_key(ec.SECP256R1())
    proof = create_dpop_proof(key, method="POST", url=f"{url}/token", now=datetime.now(UTC))
    form = {"grant_type": GRANT_TYPE, "client_id": "proxy", "client_secret": SECRET,
            "subject_token": user_token, "subject_token_type": ACCESS_TOKEN_TYPE}
    answer = post(url, form, headers={"DPoP": proof})
    assert answer.status_code == 200, answer.text
    assert answer.json()["token_type"] == "DPoP"
    verifier = TokenVerifier([IssuerConfig(issuer=url, keys=HttpJwks(issuer=url))],
                             TokenOptions(audiences=frozenset({"medclave"})))
    rebound = verifier.verify(answer.json()["access_token"], now=datetime.now(UTC))
    assert rebound.subject == "dr-bob" and rebound.roles == ("clinician",)
    assert rebound.confirmation_jkt == jwk_thumbprint(key.public_key())
    assert rebound.expires_at <= original.expires_at
    refused(exchange(url, user_token, requested_subject="dr-alice"), "invalid_request",
            "auth.exchange_subject_invalid")
    refused(exchange(url, user_token, scope="researcher"), "invalid_scope",
            "auth.scope_exceeded")


def test_client_authentication_is_required(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    answer = post(url, {"grant_type": GRANT_TYPE, "subject_token": client_token(url),
                        "subject_token_type": ACCESS_TOKEN_TYPE, "requested_subject": "dr-alice"})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_cli_registers_a_proxy_client_and_a_user_without_password(tmp_path: Path) -> None:
    data = tmp_path
    runner = CliRunner()
    made = runner.invoke(idp_cli.app, ["add-client", "proxy", "--tenant", "st-mary",
                                       "--act-for-users", "--data", str(data)],
                         input=f"{SECRET}\n")
    assert made.exit_code == 0, made.output
    user = runner.invoke(idp_cli.app, ["add-user", "dr-carol", "--tenant", "st-mary",
                                       "--roles", "clinician", "--no-password", "--data",
                                       str(data)])
    assert user.exit_code == 0, user.output
    d = Directory(data)
    assert d.authenticate_client("proxy", SECRET).act_for_users
    entry = d.user("dr-carol")
    assert entry is not None and entry.roles == ("clinician",)
    # A user without a password never passes the password grant.
    with pytest.raises(AuthError):
        d.authenticate_user("dr-carol", "")
