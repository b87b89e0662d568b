"""The dev IdP over real HTTP on 127.0.0.1, verified end to end by the Authenticator."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.auth.authn import Authenticator
from medclave.auth.dpop import create_dpop_proof
from medclave.auth.idp_server import build_service
from medclave.auth.issuer import KEY_FILE, Directory, TokenService, load_or_create_signing_key
from medclave.auth.jwks import HttpJwks
from medclave.auth.tokens import IssuerConfig, TokenOptions
from medclave.background import running
from medclave.crypto.jose import jwk_thumbprint
from medclave.errors import AuthError, InputError
from medclave.util.clock import system_clock

SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TokenService]]:
    data = tmp_path_factory.mktemp("idp")
    directory = Directory(data)
    directory.add_client("enclave-gw", SECRET, tenant="st-mary", roles=["service"])
    directory.add_user("dr-alice", SECRET, tenant="st-mary", roles=["clinician"])

    def factory(url: str) -> TokenService:
        return build_service(data, issuer=url, dev_password=True)

    with running(factory) as served:
        yield served


def post(url: str, data: dict[str, str], **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/token", data=data, timeout=10, **kw)  # type: ignore[arg-type]


def authenticator(url: str) -> Authenticator:
    keys = HttpJwks(issuer=url)
    return Authenticator(
        [IssuerConfig(issuer=url, keys=keys, tenants=frozenset({"st-mary"}))],
        TokenOptions(audiences=frozenset({"medclave"})),
        clock=system_clock,
    )


def test_discovery_and_jwks(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    meta = httpx.get(f"{url}/.well-known/openid-configuration", timeout=10).json()
    assert meta["issuer"] == url
    assert meta["token_endpoint"] == f"{url}/token"
    assert "password" in meta["grant_types_supported"]
    keys = httpx.get(meta["jwks_uri"], timeout=10).json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "OKP"
    assert "d" not in keys[0]


def test_client_credentials_end_to_end(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    form = post(url, {"grant_type": "client_credentials", "client_id": "enclave-gw", "client_secret": SECRET})
    assert form.status_code == 200, form.text
    assert form.headers["cache-control"] == "no-store"
    body = form.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    identity = authenticator(url).require_identity({"Authorization": f"Bearer {body['access_token']}"})
    assert identity.subject == "enclave-gw"
    assert identity.client_id == "enclave-gw"
    assert identity.roles == ("service",)

    basic = base64.b64encode(f"enclave-gw:{SECRET.replace(' ', '+')}".encode()).decode()
    via_basic = post(url, {"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"})
    assert via_basic.status_code == 200, via_basic.text


def test_password_grant_and_dpop_binding(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    proof = create_dpop_proof(key, method="POST", url=f"{url}/token", now=now)
    answer = post(
        url,
        {"grant_type": "password", "username": "dr-alice", "password": SECRET},
        headers={"DPoP": proof},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "DPoP"
    token = body["access_token"]
    api = "https://enclave.example/v1/chat/completions"
    a = authenticator(url)
    use = create_dpop_proof(key, method="POST", url=api, now=datetime.now(UTC), access_token=token)
    identity = a.require_identity({"Authorization": f"DPoP {token}", "DPoP": use}, method="POST", url=api)
    assert identity.dpop_verified
    assert identity.confirmation_jkt == jwk_thumbprint(key.public_key())
    # Without the proof, the bound token is refused.
    with pytest.raises(AuthError) as err:
        a.require_identity({"Authorization": f"Bearer {token}"})
    assert err.value.code == "auth.dpop_invalid"


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "client_credentials", "client_id": "enclave-gw", "client_secret": "wrong"},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": SECRET},
            401,
            "invalid_client",
        ),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
        ({"grant_type": "password", "username": "dr-alice", "password": "wrong"}, 400, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type"),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "enclave-gw",
                "client_secret": SECRET,
                "audience": "other",
            },
            400,
            "invalid_request",
        ),
    ],
)
def test_token_endpoint_refusals(
    idp: tuple[str, TokenService], form: dict[str, str], status: int, error: str
) -> None:
    url, _ = idp
    answer = post(url, form)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error
    assert answer.json()["code"].split(".")[0] in {"auth", "input"}


def test_bad_bodies(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    repeated = httpx.post(
        f"{url}/token",
        content=b"grant_type=client_credentials&grant_type=password",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert repeated.status_code == 400
    big = httpx.post(
        f"{url}/token",
        content=b"a=" + b"x" * 20000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert big.status_code == 400
    assert big.json()["code"] == "input.too_large"
    as_json = httpx.post(f"{url}/token", json={"grant_type": "client_credentials"}, timeout=10)
    assert as_json.status_code == 400


def test_dpop_proof_for_another_url_at_token_endpoint(idp: tuple[str, TokenService]) -> None:
    url, _ = idp
    key = ec.generate_private_key(ec.SECP256R1())
    proof = create_dpop_proof(
        key, method="POST", url="https://elsewhere.example/token", now=datetime.now(UTC)
    )
    answer = post(
        url,
        {"grant_type": "client_credentials", "client_id": "enclave-gw", "client_secret": SECRET},
        headers={"DPoP": proof},
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_dpop_proof"


def test_failed_logins_are_throttled(tmp_path: Path) -> None:
    directory = Directory(tmp_path)
    directory.add_client("c1", SECRET, tenant="st-mary", roles=[])

    def factory(url: str) -> TokenService:
        return build_service(tmp_path, issuer=url)

    with running(factory) as (url, _):
        for _ in range(5):
            assert (
                post(
                    url, {"grant_type": "client_credentials", "client_id": "c1", "client_secret": "no"}
                ).status_code
                == 401
            )
        blocked = post(url, {"grant_type": "client_credentials", "client_id": "c1", "client_secret": SECRET})
        assert blocked.status_code == 429
        assert blocked.json()["code"] == "auth.rate_limited"
        # The password grant is off unless asked for.
        off = post(url, {"grant_type": "password", "username": "x", "password": "y"})
        assert off.json()["error"] == "unsupported_grant_type"


def test_key_file_is_private(tmp_path: Path) -> None:
    load_or_create_signing_key(tmp_path, alg="ES256")
    mode = stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert load_or_create_signing_key(tmp_path).algorithm == "ES256"  # reused, not replaced
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(InputError) as err:
        load_or_create_signing_key(tmp_path)
    assert err.value.code == "config.invalid"


def test_directory_files_are_private_and_hashed(tmp_path: Path) -> None:
    directory = Directory(tmp_path)
    directory.add_user("u1", SECRET, tenant="st-mary", roles=["patient"])
    text = (tmp_path / "users.json").read_text()
    assert SECRET not in text
    assert "scrypt$" in text
    assert stat.S_IMODE((tmp_path / "users.json").stat().st_mode) == 0o600
    assert directory.authenticate_user("u1", SECRET).roles == ("patient",)
    with pytest.raises(AuthError):
        directory.authenticate_user("u1", SECRET + "x")
    with pytest.raises(InputError):
        directory.add_user("u2", "short", tenant="st-mary", roles=[])
