"""Headers to identity, and DPoP (RFC 9449) proofs checked when the token is bound."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.auth.authn import Authenticator, parse_authorization, require_identity
from medclave.auth.dpop import (
    access_token_hash,
    create_dpop_proof,
    normalize_htu,
    verify_dpop_proof,
)
from medclave.auth.replay import MemoryReplayCache
from medclave.auth.tokens import IssuerConfig, TokenOptions
from medclave.crypto.jose import (
    b64url_decode,
    b64url_encode,
    jwk_thumbprint,
    public_jwk_members,
    sign_compact,
)
from medclave.errors import AuthError, MedclaveError
from tests.auth._helpers import AUDIENCE, ISSUER, NOW, at, ed_key, jwks, mint
from tests.conftest import flip

URL = "https://enclave.st-mary.example/v1/chat/completions"


def client_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def authenticator(**kw: object) -> Authenticator:
    return Authenticator(
        [IssuerConfig(issuer=ISSUER, keys=jwks(ed_key()))],
        TokenOptions(audiences=frozenset({AUDIENCE})),
        clock=lambda: NOW,
        **kw,  # type: ignore[arg-type]
    )


def bound(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey, n: int = 0) -> str:
    return mint(cnf={"jkt": jwk_thumbprint(key.public_key())}, n=n)


def code_of(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(AuthError) as err:
        fn()
    return err.value.code


# --- Authorization header ---------------------------------------------------------------------------


def test_bearer_round_trip() -> None:
    identity = authenticator().require_identity({"authorization": f"Bearer {mint()}"})
    assert identity.subject == "dr-alice"
    assert not identity.dpop_verified


def test_module_function_form() -> None:
    a = authenticator()
    assert require_identity({"Authorization": f"bearer {mint()}"}, authenticator=a).tenant == "st-mary"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "auth.token_missing"),
        ({"Authorization": ""}, "auth.token_missing"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "auth.token_missing"),
        ({"Authorization": "Bearer"}, "auth.token_malformed"),
        ({"Authorization": "Bearer a b"}, "auth.token_malformed"),
        ({"Authorization": "Bearer x", "authorization": "Bearer y"}, "auth.token_malformed"),
        ({"Authorization": "Bearer " + "a" * 9000}, "auth.token_malformed"),
        ({"Authorization": "Bearer not.a.token"}, "auth.token_malformed"),
    ],
)
def test_header_refusals(headers: dict[str, str], code: str) -> None:
    assert code_of(lambda: authenticator().require_identity(headers)) == code


def test_parse_authorization_schemes() -> None:
    assert parse_authorization("DPoP abc") == ("DPoP", "abc")
    assert parse_authorization("  bearer   abc ") == ("Bearer", "abc")


# --- DPoP through the authenticator ------------------------------------------------------------------


def test_dpop_bound_token_with_valid_proof() -> None:
    key = client_key()
    token = bound(key)
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token=token)
    identity = authenticator().require_identity(
        {"Authorization": f"DPoP {token}", "DPoP": proof}, method="POST", url=URL
    )
    assert identity.dpop_verified
    assert identity.confirmation_jkt == jwk_thumbprint(key.public_key())


def test_dpop_proof_for_another_key() -> None:
    token = bound(client_key())
    proof = create_dpop_proof(client_key(), method="POST", url=URL, now=NOW, access_token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    assert code_of(lambda: authenticator().require_identity(headers, method="POST", url=URL)) == (
        "auth.dpop_invalid"
    )


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "https://enclave.st-mary.example/v1/embeddings"),
        ("POST", "https://evil.example/v1/chat/completions"),
        ("POST", "http://enclave.st-mary.example/v1/chat/completions"),
        ("GET", URL),
    ],
)
def test_dpop_proof_for_another_url_or_method(method: str, url: str) -> None:
    key = client_key()
    token = bound(key)
    proof = create_dpop_proof(key, method=method, url=url, now=NOW, access_token=token)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    assert code_of(lambda: authenticator().require_identity(headers, method="POST", url=URL)) == (
        "auth.dpop_invalid"
    )


def test_bound_token_needs_proof_and_dpop_scheme() -> None:
    key = client_key()
    token = bound(key)
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token=token)
    a = authenticator()
    # Sent as Bearer (RFC 9449 §7.1), without a proof, or without the request's method/URL.
    for headers, kw in [
        ({"Authorization": f"Bearer {token}", "DPoP": proof}, {"method": "POST", "url": URL}),
        ({"Authorization": f"DPoP {token}"}, {"method": "POST", "url": URL}),
        ({"Authorization": f"DPoP {token}", "DPoP": proof}, {}),
    ]:
        assert code_of(lambda h=headers, k=kw: a.require_identity(h, **k)) == "auth.dpop_invalid"
    # None of those refusals used up the token: the proper request still goes through.
    assert a.require_identity(
        {"Authorization": f"DPoP {token}", "DPoP": proof}, method="POST", url=URL
    ).dpop_verified


def test_unbound_token_under_dpop_scheme_is_refused() -> None:
    headers = {"Authorization": f"DPoP {mint()}"}
    assert code_of(lambda: authenticator().require_identity(headers)) == "auth.dpop_invalid"


def test_require_dpop_refuses_bearer_tokens() -> None:
    a = authenticator(require_dpop=True)
    assert code_of(lambda: a.require_identity({"Authorization": f"Bearer {mint()}"})) == "auth.dpop_invalid"


def test_a_bound_token_is_reused_with_a_fresh_proof_each_time_and_no_proof_twice() -> None:
    """Issue 10: the token is reused until it expires; what is one-time is the proof (RFC 9449
    §11.1). A thief's proof is refused, and a proof sent twice is refused the second time."""
    key = client_key()
    token = bound(key)
    a = authenticator()
    thief = create_dpop_proof(client_key(), method="POST", url=URL, now=NOW, access_token=token)
    with pytest.raises(AuthError):
        a.require_identity({"Authorization": f"DPoP {token}", "DPoP": thief}, method="POST", url=URL)
    for _ in range(5):
        good = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token=token)
        headers = {"Authorization": f"DPoP {token}", "DPoP": good}
        assert a.require_identity(headers, method="POST", url=URL).dpop_verified
    assert code_of(lambda: a.require_identity(headers, method="POST", url=URL)) == "auth.dpop_invalid"


def test_a_bearer_token_is_reused_until_it_expires() -> None:
    a = authenticator()
    token = mint()
    for _ in range(50):
        assert a.require_identity({"Authorization": f"Bearer {token}"}).subject == "dr-alice"


# --- the proof checks one by one -------------------------------------------------------------------


def check(
    proof: str, *, token: str | None = "tok", jkt: str | None = None, when: float = 0, **kw: object
) -> str:
    replay = kw.pop("replay") if "replay" in kw else MemoryReplayCache()
    verify_dpop_proof(
        proof,
        method=str(kw.pop("method", "POST")),
        url=str(kw.pop("url", URL)),
        now=at(when),
        access_token=token,
        expected_jkt=jkt,
        replay=replay,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return "ok"


def test_proof_happy_path_and_replay() -> None:
    key = client_key()
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token="tok")
    cache = MemoryReplayCache()
    assert check(proof, jkt=jwk_thumbprint(key.public_key()), replay=cache) == "ok"
    assert code_of(lambda: check(proof, replay=cache)) == "auth.dpop_invalid"


def test_proof_flipped_signature_twin() -> None:
    key = client_key()
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token="tok")
    head, payload, sig = proof.split(".")
    forged = f"{head}.{payload}.{b64url_encode(flip(b64url_decode(sig), 3))}"
    assert code_of(lambda: check(forged)) == "auth.dpop_invalid"


def test_proof_time_window() -> None:
    key = client_key()
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token="tok")
    assert code_of(lambda: check(proof, when=-60)) == "auth.dpop_invalid"  # from the future
    assert code_of(lambda: check(proof, when=400)) == "auth.dpop_invalid"  # too old
    assert check(proof, when=299) == "ok"


def test_proof_ath_and_nonce() -> None:
    key = client_key()
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token="tok", nonce="n1")
    assert code_of(lambda: check(proof, token="other")) == "auth.dpop_invalid"
    assert code_of(lambda: check(proof, nonce="n2")) == "auth.dpop_invalid"
    assert check(proof, nonce="n1") == "ok"
    no_ath = create_dpop_proof(key, method="POST", url=URL, now=NOW)
    assert code_of(lambda: check(no_ath)) == "auth.dpop_invalid"
    assert check(no_ath, token=None) == "ok"  # at a token endpoint there is no token yet
    assert access_token_hash("tok") == b64url_encode(__import__("hashlib").sha256(b"tok").digest())


def _proof_with(header: dict[str, object], key: ec.EllipticCurvePrivateKey) -> str:
    payload = {
        "jti": "j",
        "htm": "POST",
        "htu": URL,
        "iat": int(NOW.timestamp()),
        "ath": access_token_hash("tok"),
    }
    return sign_compact(header, payload, key)


def test_proof_header_checks() -> None:
    key = client_key()
    jwk = public_jwk_members(key.public_key())
    assert check(_proof_with({"typ": "dpop+jwt", "jwk": jwk}, key)) == "ok"
    for header in (
        {"typ": "JWT", "jwk": jwk},
        {"jwk": jwk},
        {"typ": "dpop+jwt"},
        {"typ": "dpop+jwt", "jwk": {**jwk, "d": "AAAA"}},  # a private key in the header
        {"typ": "dpop+jwt", "jwk": public_jwk_members(client_key().public_key())},  # not the signer
    ):
        assert code_of(lambda h=header: check(_proof_with(h, key))) == "auth.dpop_invalid"


@pytest.mark.parametrize(
    ("claimed", "actual"),
    [
        ("https://EXAMPLE.org/a", "https://example.org/a"),
        ("https://example.org:443/a", "https://example.org/a"),
        ("http://example.org:80", "http://example.org/"),
        ("https://example.org/a?x=1#f", "https://example.org/a?y=2"),
        ("https://[::1]:8443/a", "https://[::1]:8443/a"),
    ],
)
def test_htu_normalization(claimed: str, actual: str) -> None:
    assert normalize_htu(claimed) == normalize_htu(actual)


@pytest.mark.parametrize(
    ("claimed", "actual"),
    [
        ("https://example.org/a", "https://example.org/A"),
        ("https://example.org:8443/a", "https://example.org/a"),
        ("https://example.org/a", "http://example.org/a"),
    ],
)
def test_htu_differences_matter(claimed: str, actual: str) -> None:
    assert normalize_htu(claimed) != normalize_htu(actual)


@pytest.mark.parametrize("url", ["", "ftp://x/a", "https://user:pw@x/a", "https:///a", "https://x:99999/"])
def test_htu_refusals(url: str) -> None:
    assert code_of(lambda: normalize_htu(url)) == "auth.dpop_invalid"


def test_ed25519_proofs_work_too() -> None:
    key = Ed25519PrivateKey.generate()
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token="tok")
    assert check(proof, jkt=jwk_thumbprint(key.public_key())) == "ok"


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_proofs_never_verify(data: st.DataObject) -> None:
    key = client_key() if data.draw(st.booleans()) else ed_key()
    proof = create_dpop_proof(key, method="POST", url=URL, now=NOW, access_token="tok", jti="fixed")
    i = data.draw(st.integers(0, len(proof) - 1))
    mutated = proof[:i] + data.draw(st.sampled_from("AQgw9-_.")) + proof[i + 1 :]
    if mutated == proof:
        return
    try:
        check(mutated, jkt=jwk_thumbprint(key.public_key()))
    except MedclaveError:
        return
    pytest.fail("a mutated proof verified")


def test_lifetime_option_bounds() -> None:
    from medclave.auth.dpop import DpopOptions
    from medclave.errors import InputError

    with pytest.raises(InputError):
        DpopOptions(max_age=timedelta(hours=1))


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["Authorization", "authorization", "DPoP", "dpop", "X-Other"]),
        st.text(max_size=200),
        max_size=4,
    )
)
def test_random_headers_only_raise_auth_errors(headers: dict[str, str]) -> None:
    try:
        authenticator().require_identity(headers, method="POST", url=URL)
    except MedclaveError:
        return
    pytest.fail("random headers were accepted")
