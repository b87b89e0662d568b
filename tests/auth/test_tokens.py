"""Access tokens: each refusal with its stable code, and the accepted shapes."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.auth.tokens import IssuerConfig, TokenOptions, TokenVerifier
from medclave.crypto.jose import b64url_decode, b64url_encode, public_jwk_members, sign_compact
from medclave.errors import AuthError, InputError, MedclaveError
from tests.auth._helpers import (
    AUDIENCE,
    ISSUER,
    NOW,
    at,
    claims,
    ec_key,
    ed_key,
    jwks,
    kid,
    mint,
    raw_jws,
    rsa_key,
)
from tests.conftest import flip


def verifier(*, tenants: frozenset[str] | None = None, **opts: object) -> TokenVerifier:
    options = TokenOptions(audiences=frozenset({AUDIENCE}), **opts)  # type: ignore[arg-type]
    cfg = IssuerConfig(issuer=ISSUER, keys=jwks(ed_key(), ec_key(), rsa_key()), tenants=tenants)
    return TokenVerifier([cfg], options)


def refused(token: str, code: str, *, when: float = 0, v: TokenVerifier | None = None) -> None:
    with pytest.raises(AuthError) as err:
        (v or verifier()).verify(token, now=at(when))
    assert err.value.code == code, err.value.detail


# --- accepted -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [ed_key, ec_key, rsa_key], ids=["EdDSA", "ES256", "RS256"])
def test_accepts_each_allowed_algorithm(key) -> None:  # type: ignore[no-untyped-def]
    identity = verifier().verify(mint(key()), now=NOW)
    assert identity.subject == "dr-alice"
    assert identity.tenant == "st-mary"
    assert identity.roles == ("clinician",)
    assert identity.issuer == ISSUER
    assert identity.expires_at == at(300)
    assert identity.confirmation_jkt is None


def test_flipped_signature_twin_is_refused() -> None:
    token = mint()
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{b64url_encode(flip(b64url_decode(sig), 5))}"
    refused(forged, "auth.signature_invalid")
    verifier().verify(token, now=NOW)  # the original still verifies


def test_changed_claim_twin_is_refused() -> None:
    token = mint()
    head, _, sig = token.split(".")
    payload = b64url_encode(json.dumps(claims(roles=["admin"])).encode())
    refused(f"{head}.{payload}.{sig}", "auth.signature_invalid")


def test_audience_list_and_typ_variants() -> None:
    v = verifier()
    v.verify(mint(aud=["other", AUDIENCE], n=1), now=NOW)
    v.verify(mint(header={"typ": "JWT"}, n=2), now=NOW)
    v.verify(mint(header={"typ": "application/at+jwt"}, n=3), now=NOW)


# --- the refusals the issue lists ---------------------------------------------------------------------


def test_expired() -> None:
    # Bounded skew: 60 s by default. At exp + skew the token is dead; a second before, alive.
    refused(mint(), "auth.token_expired", when=360)
    verifier().verify(mint(), now=at(359))


def test_not_yet_valid() -> None:
    refused(mint(nbf=int(at(120).timestamp())), "auth.token_not_yet_valid")
    refused(mint(iat=int(at(120).timestamp()), nbf=None), "auth.token_not_yet_valid")
    verifier().verify(mint(nbf=int(at(59).timestamp())), now=NOW)


def test_wrong_audience() -> None:
    refused(mint(aud="another-service"), "auth.audience_mismatch")
    refused(mint(aud=["a", "b"]), "auth.audience_mismatch")


def test_wrong_issuer() -> None:
    refused(mint(iss="https://evil.example"), "auth.issuer_untrusted")
    refused(mint(iss=None), "auth.issuer_untrusted")
    refused(mint(iss=ISSUER + "/"), "auth.issuer_untrusted")  # exact match only


def test_alg_none() -> None:
    token = raw_jws({"alg": "none", "typ": "JWT"}, claims(), b"")
    refused(token, "auth.algorithm_forbidden")


def test_hs256_signed_with_the_public_key() -> None:
    for secret in (
        json.dumps(public_jwk_members(ed_key().public_key())).encode(),
        b64url_decode(public_jwk_members(ed_key().public_key())["x"]),
    ):
        header = {"alg": "HS256", "typ": "JWT", "kid": kid(ed_key())}
        h = b64url_encode(json.dumps(header).encode())
        p = b64url_encode(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
        refused(f"{h}.{p}.{b64url_encode(mac)}", "auth.algorithm_forbidden")


def test_a_token_is_reused_until_it_expires() -> None:
    """Issue 10: an access token is a bearer credential (RFC 6750), not a one-time value; a
    single-use jti broke every app's second request."""
    v = verifier()
    token = mint(n=7)
    for _ in range(50):
        assert v.verify(token, now=NOW).token_id == "jti-7"
    # ...and only until it expires.
    refused(token, "auth.token_expired", when=300 + 61, v=v)


def test_lifetime_at_most_15_minutes() -> None:
    iat = int(NOW.timestamp())
    refused(mint(exp=iat + 901), "auth.token_lifetime_too_long")
    verifier().verify(mint(exp=iat + 900), now=NOW)
    refused(
        mint(exp=iat + 300), "auth.token_lifetime_too_long", v=verifier(max_lifetime=timedelta(minutes=4))
    )


# --- key selection -------------------------------------------------------------------------------------


def test_unknown_kid() -> None:
    refused(mint(header={"kid": "nope"}), "auth.key_unknown")


def test_kid_of_another_key_type() -> None:
    # Header says ES256 but names the Ed25519 key: refused as algorithm confusion.
    token = sign_compact({"kid": kid(ed_key())}, claims(), ec_key())
    refused(token, "auth.algorithm_forbidden")


def test_no_kid_with_several_keys_of_the_type() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate()
    cfg = IssuerConfig(issuer=ISSUER, keys=jwks(ed_key(), other))
    v = TokenVerifier([cfg], TokenOptions(audiences=frozenset({AUDIENCE})))
    token = sign_compact({}, claims(), ed_key())
    with pytest.raises(AuthError) as err:
        v.verify(token, now=NOW)
    assert err.value.code == "auth.key_unknown"
    # With one key of the type, no kid is needed.
    single = TokenVerifier([IssuerConfig(issuer=ISSUER, keys=jwks(ed_key()))], v.options)
    single.verify(token, now=NOW)


def test_token_signed_by_another_key_with_our_kid() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    token = sign_compact({"kid": kid(ed_key())}, claims(), Ed25519PrivateKey.generate())
    refused(token, "auth.signature_invalid")


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
def test_keys_never_come_from_the_token(name: str) -> None:
    refused(mint(header={name: "https://evil.example/keys"}), "auth.token_malformed")


def test_dpop_proof_is_not_an_access_token() -> None:
    refused(mint(header={"typ": "dpop+jwt"}), "auth.token_malformed")


# --- claims ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "over",
    [
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"jti": None},
        {"sub": ""},
        {"sub": "a\nb"},
        {"exp": "soon"},
        {"exp": True},
        {"iat": 2.0**41},
        {"aud": None},
        {"aud": []},
        {"aud": 5},
        {"tenant": None},
        {"tenant": "st mary"},
        {"roles": "clinician"},
        {"roles": ["x" * 200]},
        {"roles": [1]},
        {"cnf": {"x5t#S256": "abc"}},
        {"cnf": {"jkt": "short"}},
    ],
)
def test_malformed_claims(over: dict[str, object]) -> None:
    refused(mint(**over), "auth.token_malformed")


def test_exp_not_after_iat() -> None:
    iat = int(NOW.timestamp())
    refused(mint(exp=iat), "auth.token_malformed")
    refused(mint(iat=iat + 30, exp=iat + 10, nbf=None), "auth.token_malformed")


def test_issuer_limited_to_its_tenants() -> None:
    v = verifier(tenants=frozenset({"st-mary"}))
    v.verify(mint(n=1), now=NOW)
    refused(mint(tenant="northside", n=2), "auth.issuer_untrusted", v=v)
    # A single-tenant issuer may omit the tenant claim.
    assert v.verify(mint(tenant=None, n=3), now=NOW).tenant == "st-mary"


# --- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        {"audiences": frozenset()},
        {"audiences": frozenset({"a"}), "max_lifetime": timedelta(minutes=16)},
        {"audiences": frozenset({"a"}), "clock_skew": timedelta(minutes=6)},
        {"audiences": frozenset({"a"}), "algorithms": frozenset({"HS256"})},
        {"audiences": frozenset({"a"}), "algorithms": frozenset()},
    ],
)
def test_options_are_bounded(opts: dict[str, object]) -> None:
    with pytest.raises(InputError) as err:
        TokenOptions(**opts)  # type: ignore[arg-type]
    assert err.value.code == "config.invalid"


def test_naive_time_is_refused() -> None:
    with pytest.raises(InputError):
        verifier().verify(mint(), now=NOW.replace(tzinfo=None))


def test_duplicate_issuers_are_refused() -> None:
    cfg = IssuerConfig(issuer=ISSUER, keys=jwks(ed_key()))
    with pytest.raises(InputError):
        TokenVerifier([cfg, cfg], TokenOptions(audiences=frozenset({AUDIENCE})))


# --- fuzzing ------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_tokens_never_verify(data: st.DataObject) -> None:
    token = mint(n=99)
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("AQgw09-_.x"))
    mutated = token[:i] + c + token[i + 1 :]
    if mutated == token:
        return
    try:
        verifier().verify(mutated, now=NOW)
    except MedclaveError:
        return
    pytest.fail("a mutated token verified")


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=10,
    )
)
def test_random_claims_signed_by_the_issuer_only_raise_medclave_errors(payload: dict[str, object]) -> None:
    # Even with a valid signature, arbitrary claim shapes never crash the verifier.
    token = sign_compact({"kid": kid(ed_key())}, {**payload, "iss": ISSUER}, ed_key())
    try:
        verifier().verify(token, now=NOW)
    except MedclaveError:
        return
    pytest.fail("random claims were accepted")
