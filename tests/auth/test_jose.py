"""The strict JWS/JWK layer: RFC vectors, algorithm confusion, bounds, and fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.auth.jose import (
    SUPPORTED_ALGORITHMS,
    b64url_decode,
    b64url_encode,
    parse_compact,
    parse_jwk,
    public_jwk_members,
    sign_compact,
    verify_signature,
)
from medclave.errors import AuthError, MedclaveError
from tests.auth._helpers import ec_key, ed_key, raw_jws, rsa_key
from tests.conftest import flip

ALGS = frozenset(SUPPORTED_ALGORITHMS)

# RFC 8037 Appendix A.1-A.4: an Ed25519 key, its thumbprint, and a JWS signed with it.
RFC8037_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
    "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
    "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _jws_payload_text(token: str) -> bytes:
    return b64url_decode(token.split(".")[1])


# --- RFC vectors --------------------------------------------------------------------------------


def test_rfc8037_ed25519_vector_verifies_and_its_twin_does_not() -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key = parse_jwk(RFC8037_JWK)
    assert key.thumbprint == RFC8037_THUMBPRINT
    assert isinstance(key.key, Ed25519PublicKey)
    # The RFC's payload is text, not a JWT claims set, so check the signature directly.
    head, payload, sig = RFC8037_JWS.split(".")
    assert b64url_decode(payload) == b"Example of Ed25519 signing"
    key.key.verify(b64url_decode(sig), f"{head}.{payload}".encode())
    with pytest.raises(InvalidSignature):
        key.key.verify(flip(b64url_decode(sig), 0), f"{head}.{payload}".encode())


def test_rfc7638_thumbprint() -> None:
    assert parse_jwk(RFC7638_JWK).thumbprint == RFC7638_THUMBPRINT


# --- base64url ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["YQ==", "YQ=", "Y", "a+b", "a/b", "YQ ", "YR"])
def test_b64url_is_strict(text: str) -> None:
    # Padding, the standard alphabet, impossible lengths and non-canonical trailing bits.
    with pytest.raises(AuthError) as err:
        b64url_decode(text)
    assert err.value.code == "auth.token_malformed"


@given(st.binary(max_size=64))
def test_b64url_roundtrip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


# --- signatures: each algorithm, and its flipped twin --------------------------------------------


@pytest.mark.parametrize("make", [ed_key, ec_key, rsa_key], ids=["EdDSA", "ES256", "RS256"])
def test_sign_verify_and_flipped_twin(make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    token = sign_compact({"typ": "JWT"}, {"sub": "x"}, key)
    jwk = parse_jwk(public_jwk_members(key.public_key()))
    jws = parse_compact(token, algorithms=ALGS)
    verify_signature(jws, jwk)
    head, payload, sig = token.split(".")
    for part in ("payload", "signature"):
        raw = bytearray(b64url_decode(payload if part == "payload" else sig))
        if part == "payload":
            raw = bytearray(json.dumps({"sub": "y"}).encode())
            forged = f"{head}.{b64url_encode(bytes(raw))}.{sig}"
        else:
            forged = f"{head}.{payload}.{b64url_encode(flip(bytes(raw), len(raw) // 2))}"
        with pytest.raises(AuthError) as err:
            verify_signature(parse_compact(forged, algorithms=ALGS), jwk)
        assert err.value.code == "auth.signature_invalid"


def test_es256_der_signature_is_refused() -> None:
    # RFC 7518 §3.4: R||S only. A DER-encoded ECDSA signature must not be accepted.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec_key()
    token = sign_compact({}, {"sub": "x"}, key)
    head, payload, _ = token.split(".")
    der = key.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    forged = f"{head}.{payload}.{b64url_encode(der)}"
    with pytest.raises(AuthError) as err:
        verify_signature(
            parse_compact(forged, algorithms=ALGS), parse_jwk(public_jwk_members(key.public_key()))
        )
    assert err.value.code == "auth.signature_invalid"


# --- algorithm confusion --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS256", "HS384", "HS512", "ES384", "PS256", ""])
def test_forbidden_algorithms_refused_before_any_key(alg: str) -> None:
    token = raw_jws({"alg": alg}, {"sub": "x"}, b"sig")
    with pytest.raises(AuthError) as err:
        parse_compact(token, algorithms=ALGS)
    assert err.value.code in {"auth.algorithm_forbidden"}


def test_alg_none_with_empty_signature() -> None:
    token = raw_jws({"alg": "none"}, {"sub": "x"}, b"")
    with pytest.raises(AuthError) as err:
        parse_compact(token, algorithms=ALGS)
    assert err.value.code == "auth.algorithm_forbidden"


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # The classic confusion: sign with HMAC using the verifier's public key as the secret.
    key = ed_key()
    public = json.dumps(public_jwk_members(key.public_key())).encode()
    header = {"alg": "HS256", "typ": "JWT"}
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps({"sub": "x"}).encode())
    mac = hmac.new(public, f"{h}.{p}".encode(), hashlib.sha256).digest()
    with pytest.raises(AuthError) as err:
        parse_compact(f"{h}.{p}.{b64url_encode(mac)}", algorithms=ALGS)
    assert err.value.code == "auth.algorithm_forbidden"


@pytest.mark.parametrize(
    ("signer", "header_alg"),
    [(ed_key, "ES256"), (ed_key, "RS256"), (ec_key, "EdDSA"), (rsa_key, "ES256"), (ec_key, "RS256")],
)
def test_key_type_must_match_alg(signer, header_alg: str) -> None:  # type: ignore[no-untyped-def]
    # A token relabelled to another algorithm is checked against the signer's own key: the key
    # decides which algorithm applies, so the relabelled header is refused, not reinterpreted.
    key = signer()
    token = sign_compact({}, {"sub": "x"}, key)
    _, payload, sig = token.split(".")
    relabelled = b64url_encode(json.dumps({"alg": header_alg}).encode())
    jws = parse_compact(f"{relabelled}.{payload}.{sig}", algorithms=ALGS)
    with pytest.raises(AuthError) as err:
        verify_signature(jws, parse_jwk(public_jwk_members(key.public_key())))
    assert err.value.code == "auth.algorithm_forbidden"


def test_allow_list_cannot_name_unsupported_algorithms() -> None:
    with pytest.raises(AuthError):
        parse_compact(sign_compact({}, {}, ed_key()), algorithms=frozenset({"HS256"}))


def test_allow_list_narrower_than_supported() -> None:
    token = sign_compact({}, {"sub": "x"}, ed_key())
    with pytest.raises(AuthError) as err:
        parse_compact(token, algorithms=frozenset({"ES256"}))
    assert err.value.code == "auth.algorithm_forbidden"


# --- structure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",  # JWE
        raw_jws({"alg": "EdDSA"}, {"x": 1}, b"s").replace(".", "..", 1),
        "e30.e30.c2ln",  # {} header: no alg
        "W10.e30.c2ln",  # [] header
        b64url_encode(b'{"alg":"EdDSA","alg":"ES256"}') + ".e30.c2ln",  # duplicate member
        b64url_encode(b'{"alg":"EdDSA","crit":["exp"]}') + ".e30.c2ln",
        b64url_encode(b'{"alg":"EdDSA","b64":false}') + ".e30.c2ln",
        b64url_encode(b'{"alg":"EdDSA"}') + "." + b64url_encode(b"[1]") + ".c2ln",
        b64url_encode(b'{"alg":"EdDSA"}') + "." + b64url_encode(b'{"a":NaN}') + ".c2ln",
        b64url_encode(b'{"alg":"EdDSA"}') + "." + b64url_encode(b"\xff\xfe") + ".c2ln",
        "x" * 9000,
    ],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(AuthError) as err:
        parse_compact(token, algorithms=ALGS)
    assert err.value.code in {"auth.token_malformed", "auth.signature_invalid"}


def test_header_size_is_bounded() -> None:
    header = {"alg": "EdDSA", "pad": "x" * 3000}
    with pytest.raises(AuthError) as err:
        parse_compact(raw_jws(header, {}, b"s"), algorithms=ALGS)
    assert err.value.code == "auth.token_malformed"


def test_deep_nesting_is_a_clean_refusal() -> None:
    payload = b64url_encode(b"[" * 5000 + b"]" * 5000)
    token = b64url_encode(b'{"alg":"EdDSA"}') + "." + payload + ".c2ln"
    with pytest.raises(AuthError):
        parse_compact(token, algorithms=ALGS)


# --- JWK --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: {**j, "d": "AAAA"},  # private material
        lambda j: {**j, "crv": "X25519"},
        lambda j: {**j, "kty": "oct", "k": "c2VjcmV0"},
        lambda j: {**j, "alg": "ES256"},  # declared for another algorithm
        lambda j: {**j, "use": "enc"},
        lambda j: {**j, "key_ops": ["sign"]},
        lambda j: {**j, "x": j["x"][:-2]},
        lambda j: {**j, "kid": 5},
        lambda j: {k: v for k, v in j.items() if k != "x"},
    ],
)
def test_unusable_ed25519_jwks(mutate) -> None:  # type: ignore[no-untyped-def]
    good = public_jwk_members(ed_key().public_key())
    parse_jwk(good)
    with pytest.raises(AuthError) as err:
        parse_jwk(mutate(good))
    assert err.value.code == "auth.key_unknown"


def test_ec_point_off_curve_and_other_curves() -> None:
    good = public_jwk_members(ec_key().public_key())
    y = bytearray(b64url_decode(good["y"]))
    y[-1] ^= 1
    with pytest.raises(AuthError):
        parse_jwk({**good, "y": b64url_encode(bytes(y))})
    with pytest.raises(AuthError):
        parse_jwk({**good, "crv": "P-384"})


def test_small_rsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(AuthError) as err:
        parse_jwk(public_jwk_members(small.public_key()))
    assert err.value.code == "auth.key_unknown"


# --- fuzzing ------------------------------------------------------------------------------------------


def _valid_token() -> str:
    return sign_compact({"typ": "JWT"}, {"sub": "x", "n": 1}, ed_key())


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_random_text_only_raises_medclave_errors(text: str) -> None:
    with contextlib.suppress(MedclaveError):
        parse_compact(text, algorithms=ALGS)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_tokens_never_verify(data: st.DataObject) -> None:
    token = _valid_token()
    jwk = parse_jwk(public_jwk_members(ed_key().public_key()))
    i = data.draw(st.integers(0, len(token) - 1))
    c = data.draw(st.sampled_from("ABCabc0189-_.=+/ \x00é"))
    mutated = token[:i] + c + token[i + 1 :]
    if mutated == token:
        return
    try:
        verify_signature(parse_compact(mutated, algorithms=ALGS), jwk)
    except MedclaveError:
        return
    # Only a change to the signature's unused trailing bits could survive: strict decoding
    # refuses those, so nothing gets here.
    pytest.fail(f"mutated token verified: {mutated}")


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["kty", "crv", "x", "y", "n", "e", "alg", "use", "kid", "d"]),
        st.one_of(st.text(max_size=60), st.integers(), st.none()),
        max_size=6,
    )
)
def test_random_jwks_only_raise_medclave_errors(obj: dict[str, object]) -> None:
    with contextlib.suppress(MedclaveError):
        parse_jwk(obj)
