"""The strict JWS/JWK layer (medclave.crypto.jose): RFC vectors, algorithm confusion, bounds,
signature-before-payload, and fuzzing. Codes here are the crypto layer's own (CRYPTO_ERRORS);
tests/auth and tests/attestation check the codes their profiles give the same refusals."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.crypto.jose import (
    CRYPTO_ERRORS,
    SUPPORTED_ALGORITHMS,
    CompactJws,
    Jwk,
    b64url_decode,
    b64url_encode,
    parse_compact,
    public_jwk_members,
    sign_compact,
    verified_claims,
    verify_signature,
)
from medclave.crypto.jose import parse_jwk as _parse_jwk
from medclave.errors import CryptoError, MedclaveError
from tests.auth._helpers import ec_key, ed_key, raw_jws, rsa_key
from tests.conftest import flip

ALGS = frozenset(SUPPORTED_ALGORITHMS)


def parse(token: str, algorithms: frozenset[str] = ALGS) -> CompactJws:
    return parse_compact(token, algorithms=algorithms, errors=CRYPTO_ERRORS)


def parse_jwk(obj: object) -> Jwk:
    return _parse_jwk(obj, errors=CRYPTO_ERRORS)


def signed_raw(header: dict[str, object], payload: bytes, key: Ed25519PrivateKey) -> str:
    """A correctly signed EdDSA token over arbitrary payload bytes (not necessarily JSON)."""
    h = b64url_encode(json.dumps({**header, "alg": "EdDSA"}).encode())
    data = f"{h}.{b64url_encode(payload)}"
    return f"{data}.{b64url_encode(key.sign(data.encode()))}"

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


# --- RFC vectors --------------------------------------------------------------------------------


def test_rfc8037_ed25519_vector_verifies_and_its_twin_does_not() -> None:
    key = parse_jwk(RFC8037_JWK)
    assert key.thumbprint == RFC8037_THUMBPRINT
    # Medclave's own verifier on the RFC's token (RFC 8037 A.4). Its payload is text, not a
    # claims set: the signature is checked over the bytes, before (and without) any parsing.
    jws = parse(RFC8037_JWS)
    assert jws.alg == "EdDSA" and jws.payload_bytes == b"Example of Ed25519 signing"
    verify_signature(jws, key)
    with pytest.raises(CryptoError) as err:  # ...which therefore is no claims set
        verified_claims(jws, key)
    assert err.value.code == "protocol.bad_message"
    head, payload, sig = RFC8037_JWS.split(".")
    for forged in (f"{head}.{payload}.{b64url_encode(flip(b64url_decode(sig), 0))}",
                   f"{head}.{b64url_encode(b'Example of Ed25519 signinG')}.{sig}"):
        with pytest.raises(CryptoError) as err:
            verify_signature(parse(forged), key)
        assert err.value.code == "crypto.signature_invalid"


def test_rfc7638_thumbprint() -> None:
    assert parse_jwk(RFC7638_JWK).thumbprint == RFC7638_THUMBPRINT


# --- base64url ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["YQ==", "YQ=", "Y", "a+b", "a/b", "YQ ", "YR", "QU!JD", "QUJD\n"])
def test_b64url_is_strict(text: str) -> None:
    # Padding, the standard alphabet, impossible lengths and non-canonical trailing bits.
    with pytest.raises(CryptoError) as err:
        b64url_decode(text)
    assert err.value.code == "protocol.bad_message"


def test_b64url_known_answers() -> None:
    # RFC 4648 §10 vectors (the URL alphabet differs only in '-' and '_'), unpadded.
    for plain, text in [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"),
                        (b"foob", "Zm9vYg"), (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy"),
                        (b"\xfb\xff", "-_8")]:
        assert b64url_encode(plain) == text
        assert b64url_decode(text) == plain


@given(st.binary(max_size=64))
def test_b64url_roundtrip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


# --- signatures: each algorithm, and its flipped twin --------------------------------------------


@pytest.mark.parametrize("make", [ed_key, ec_key, rsa_key], ids=["EdDSA", "ES256", "RS256"])
def test_sign_verify_and_flipped_twin(make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    token = sign_compact({"typ": "JWT"}, {"sub": "x"}, key)
    jwk = parse_jwk(public_jwk_members(key.public_key()))
    assert verified_claims(parse(token), jwk) == {"sub": "x"}
    head, payload, sig = token.split(".")
    for part in ("payload", "signature"):
        raw = bytearray(b64url_decode(payload if part == "payload" else sig))
        if part == "payload":
            raw = bytearray(json.dumps({"sub": "y"}).encode())
            forged = f"{head}.{b64url_encode(bytes(raw))}.{sig}"
        else:
            forged = f"{head}.{payload}.{b64url_encode(flip(bytes(raw), len(raw) // 2))}"
        with pytest.raises(CryptoError) as err:
            verify_signature(parse(forged), jwk)
        assert err.value.code == "crypto.signature_invalid"


def test_es256_der_signature_is_refused() -> None:
    # RFC 7518 §3.4: R||S only. A DER-encoded ECDSA signature must not be accepted.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec_key()
    token = sign_compact({}, {"sub": "x"}, key)
    head, payload, _ = token.split(".")
    der = key.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    forged = f"{head}.{payload}.{b64url_encode(der)}"
    with pytest.raises(CryptoError) as err:
        verify_signature(
            parse(forged), parse_jwk(public_jwk_members(key.public_key()))
        )
    assert err.value.code == "crypto.signature_invalid"


# --- algorithm confusion --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS256", "HS384", "HS512", "ES384", "PS256", ""])
def test_forbidden_algorithms_refused_before_any_key(alg: str) -> None:
    token = raw_jws({"alg": alg}, {"sub": "x"}, b"sig")
    with pytest.raises(CryptoError) as err:
        parse(token)
    assert err.value.code in {"crypto.algorithm_forbidden"}


def test_alg_none_with_empty_signature() -> None:
    token = raw_jws({"alg": "none"}, {"sub": "x"}, b"")
    with pytest.raises(CryptoError) as err:
        parse(token)
    assert err.value.code == "crypto.algorithm_forbidden"


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # The classic confusion: sign with HMAC using the verifier's public key as the secret.
    key = ed_key()
    public = json.dumps(public_jwk_members(key.public_key())).encode()
    header = {"alg": "HS256", "typ": "JWT"}
    h = b64url_encode(json.dumps(header).encode())
    p = b64url_encode(json.dumps({"sub": "x"}).encode())
    mac = hmac.new(public, f"{h}.{p}".encode(), hashlib.sha256).digest()
    with pytest.raises(CryptoError) as err:
        parse(f"{h}.{p}.{b64url_encode(mac)}")
    assert err.value.code == "crypto.algorithm_forbidden"


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
    jws = parse(f"{relabelled}.{payload}.{sig}")
    with pytest.raises(CryptoError) as err:
        verify_signature(jws, parse_jwk(public_jwk_members(key.public_key())))
    assert err.value.code == "crypto.algorithm_forbidden"


def test_allow_list_cannot_name_unsupported_algorithms() -> None:
    with pytest.raises(CryptoError):
        parse(sign_compact({}, {}, ed_key()), frozenset({"HS256"}))


def test_allow_list_narrower_than_supported() -> None:
    token = sign_compact({}, {"sub": "x"}, ed_key())
    with pytest.raises(CryptoError) as err:
        parse(token, frozenset({"ES256"}))
    assert err.value.code == "crypto.algorithm_forbidden"


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
        b64url_encode(b'{"alg":"EdDSA","x":1e400}') + ".e30.c2ln",
        b64url_encode(b'{"alg":"EdDSA"}') + ".e30.",  # no signature at all
        b64url_encode(b'{"alg":"EdDSA"}') + ".e30!.c2ln",
        "x" * 9000,
    ],
)
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(CryptoError) as err:
        parse(token)
    assert err.value.code in ("protocol.bad_message", "crypto.signature_invalid")
    assert (err.value.code == "crypto.signature_invalid") == token.endswith(".e30.")


BAD_PAYLOADS = [b"[1]", b'{"a":NaN}', b'{"a":1e400}', b"\xff\xfe", b'{"sub":"a","sub":"b"}',
                b"[" * 2500 + b"]" * 2500]  # deeper than the parser's stack, within the bound


@pytest.mark.parametrize("payload", BAD_PAYLOADS, ids=range(len(BAD_PAYLOADS)))
def test_payload_is_parsed_strictly_and_only_after_the_signature(payload: bytes) -> None:
    key = ed_key()
    jwk = parse_jwk(public_jwk_members(key.public_key()))
    # Correctly signed: the strict parser refuses the payload, cleanly (no RecursionError).
    with pytest.raises(CryptoError) as err:
        verified_claims(parse(signed_raw({}, payload, key)), jwk)
    assert err.value.code == "protocol.bad_message"
    # Signed by another key: the signature refuses it first, the payload is never parsed.
    with pytest.raises(CryptoError) as err:
        verified_claims(parse(signed_raw({}, payload, Ed25519PrivateKey.generate())), jwk)
    assert err.value.code == "crypto.signature_invalid"


def test_unverified_claims_are_strict_too() -> None:
    jws = parse(signed_raw({}, b'{"iss":"a","iss":"b"}', ed_key()))
    with pytest.raises(CryptoError) as err:
        jws.unverified_claims()
    assert err.value.code == "protocol.bad_message"
    assert parse(signed_raw({}, b'{"iss":"a"}', ed_key())).unverified_claims() == {"iss": "a"}


def test_header_size_is_bounded() -> None:
    header = {"alg": "EdDSA", "pad": "x" * 3000}
    with pytest.raises(CryptoError) as err:
        parse(raw_jws(header, {}, b"s"))
    assert err.value.code == "protocol.bad_message"


def test_deep_nesting_in_the_header_is_a_clean_refusal() -> None:
    header = b64url_encode(b'{"alg":"EdDSA","x":' + b"[" * 5000 + b"]" * 5000 + b"}")
    with pytest.raises(CryptoError) as err:
        parse_compact(header + ".e30.c2ln", algorithms=ALGS, errors=CRYPTO_ERRORS,
                      max_length=len(header) + 20)
    assert err.value.code == "protocol.bad_message"


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
    with pytest.raises(CryptoError) as err:
        parse_jwk(mutate(good))
    assert err.value.code == "crypto.bad_key"


def test_ec_point_off_curve_and_other_curves() -> None:
    good = public_jwk_members(ec_key().public_key())
    y = bytearray(b64url_decode(good["y"]))
    y[-1] ^= 1
    with pytest.raises(CryptoError):
        parse_jwk({**good, "y": b64url_encode(bytes(y))})
    with pytest.raises(CryptoError):
        parse_jwk({**good, "crv": "P-384"})


def test_small_rsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CryptoError) as err:
        parse_jwk(public_jwk_members(small.public_key()))
    assert err.value.code == "crypto.bad_key"


# --- fuzzing ------------------------------------------------------------------------------------------


def _valid_token() -> str:
    return sign_compact({"typ": "JWT"}, {"sub": "x", "n": 1}, ed_key())


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_random_text_only_raises_medclave_errors(text: str) -> None:
    with contextlib.suppress(MedclaveError):
        parse(text)


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
        verified_claims(parse(mutated), jwk)
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


# --- error profiles -------------------------------------------------------------------------------


def test_error_profiles_map_each_refusal_to_the_callers_code() -> None:
    from medclave.attestation.ear import EAR_JOSE_ERRORS
    from medclave.auth.jwks import AUTH_JOSE_ERRORS
    from medclave.errors import AttestationError, AuthError

    forged = raw_jws({"alg": "EdDSA"}, {"sub": "x"}, b"s" * 64)
    jwk_doc = public_jwk_members(ed_key().public_key())
    for errors, family, codes in (
        (AUTH_JOSE_ERRORS, AuthError, ("auth.token_malformed", "auth.algorithm_forbidden",
                                       "auth.signature_invalid", "auth.key_unknown")),
        (EAR_JOSE_ERRORS, AttestationError, ("attestation.malformed", "attestation.signature_invalid",
                                             "attestation.signature_invalid",
                                             "attestation.signature_invalid")),
    ):
        malformed, algorithm, signature, key = codes
        cases = [
            (lambda e=errors: parse_compact("a.b", algorithms=ALGS, errors=e), malformed),
            (lambda e=errors: parse_compact(forged, algorithms=frozenset({"ES256"}), errors=e),
             algorithm),
            (lambda e=errors: verify_signature(parse_compact(forged, algorithms=ALGS, errors=e),
                                               _parse_jwk(jwk_doc, errors=e)), signature),
            (lambda e=errors: _parse_jwk({**jwk_doc, "d": "AAAA"}, errors=e), key),
        ]
        for call, code in cases:
            with pytest.raises(family) as err:
                call()
            assert err.value.code == code


def test_a_profile_with_codes_of_another_family_fails_at_once() -> None:
    from medclave.crypto.jose import JoseErrors
    from medclave.errors import AuthError

    with pytest.raises(ValueError, match="cannot carry"):
        JoseErrors(AuthError, malformed="protocol.bad_message", algorithm="auth.algorithm_forbidden",
                   signature="auth.signature_invalid", key="auth.key_unknown")
