"""EAR tokens read by the one strict JOSE implementation (issue 9, part 5).

The attack: EAR results were read with Python's non-validating base64url decoder, so a token
with a character outside the alphabet in its signature (``QU!JD`` decodes like ``QUJD``), or with
non-zero unused trailing bits, verified like its clean twin: one result, many token texts. Each
such token is now ``attestation.malformed``.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from medclave.attestation.core import Check, Verification
from medclave.attestation.ear import issue_ear, verify_ear
from medclave.attestation.policy import appraise, default_policy
from medclave.errors import AttestationError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
# NIST P-256 group order (SEC 2 §2.4.2), written out: not taken from the code under test.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token() -> str:
    v = Verification(platform="sev-snp", claims={"measurement": "ab" * 48, "debug": False},
                     checks=(Check("signature", True),))
    return issue_ear(v, appraise(v, default_policy(), now=NOW), key=KEY, now=NOW, nonce=b"n" * 16)


def _refused(token: str, code: str) -> None:
    with pytest.raises(AttestationError) as info:
        verify_ear(token, key=KEY.public_key(), now=NOW)
    assert info.value.code == code, info.value.detail


def _non_canonical(segment: str) -> str:
    """The same bytes with a non-zero unused trailing bit in the last character."""
    unused = {2: 4, 3: 2}[len(segment) % 4]  # 2 chars carry 8 bits of 12, 3 chars 16 of 18
    last = _ALPHABET.index(segment[-1])
    assert last % (1 << unused) == 0  # canonical: the unused bits are zero
    return segment[:-1] + _ALPHABET[last | 1]


def test_clean_token_verifies() -> None:
    claims = verify_ear(_token(), key=KEY.public_key(), now=NOW + timedelta(seconds=5))
    assert claims["eat_nonce"] == "bm5ubm5ubm5ubm5ubm5ubg"  # b"n" * 16, unpadded base64url


@pytest.mark.parametrize("segment", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize("chars", ["!!!", "!", "=", " ", "+", "/", "\n", "%%%"])
def test_characters_outside_base64url_are_malformed(segment: int, chars: str) -> None:
    # Before: "!!!" or "%%%" in the signature verified (the lax decoder dropped them and the
    # padding it computed still fit, as "QU!JD" decodes like "QUJD"); in the header or payload
    # the text signed changed, so it failed as a bad signature. Now all are malformed.
    parts = _token().split(".")
    parts[segment] = parts[segment][:5] + chars + parts[segment][5:]
    _refused(".".join(parts), "attestation.malformed")


def test_non_canonical_trailing_bits_are_malformed() -> None:
    head, body, sig = _token().split(".")
    assert len(sig) == 86  # 64 bytes: the last character carries 4 unused bits
    twin = _non_canonical(sig)
    assert twin != sig and base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(
        sig + "==")  # the lax decoder reads both as the same signature
    _refused(f"{head}.{body}.{twin}", "attestation.malformed")  # before: it verified
    if len(body) % 4:
        _refused(f"{head}.{_non_canonical(body)}.{sig}", "attestation.malformed")


def test_padding_is_malformed() -> None:
    head, body, sig = _token().split(".")
    _refused(f"{head}.{body}.{sig}==", "attestation.malformed")


def _sign(header: bytes, payload: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    """A correctly ES256-signed token over any header and payload bytes."""
    data = f"{_b64(header)}.{_b64(payload)}"
    r, s = decode_dss_signature(key.sign(data.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{data}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


ES256 = b'{"alg":"ES256"}'


def test_duplicate_members_are_malformed_even_when_signed() -> None:
    # Two readers could keep the first or the last "eat_profile"; we keep neither.
    payload = (b'{"eat_profile":"tag:github.com,2023:veraison/ear","iat":%d,'
               b'"eat_profile":"x"}' % int(NOW.timestamp()))
    _refused(_sign(ES256, payload), "attestation.malformed")
    _refused(_sign(b'{"alg":"ES256","alg":"ES256"}', b"{}"), "attestation.malformed")


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "EdDSA"])
def test_other_algorithms_are_refused_before_any_key(alg: str) -> None:
    _refused(_sign(json.dumps({"alg": alg}).encode(), b"{}"), "attestation.signature_invalid")


def test_the_payload_is_not_parsed_before_the_signature() -> None:
    deep = b"[" * 2000  # deeper than Python's parser stack
    _refused(_sign(ES256, deep), "attestation.malformed")  # signed: parsed, cleanly refused
    other = ec.generate_private_key(ec.SECP256R1())
    _refused(_sign(ES256, deep, other), "attestation.signature_invalid")  # never parsed


def test_ecdsa_malleability_is_documented_not_hidden() -> None:
    """(r, n - s) is a second valid ES256 signature of the same claims (SEC 1 §4.1.4): a token's
    text does not identify an EAR, its claims do (see ``medclave.crypto.jose``)."""
    token = _token()
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    twin = f"{head}.{body}.{_b64(r + (P256_N - s).to_bytes(32, 'big'))}"
    assert twin != token
    assert verify_ear(twin, key=KEY.public_key(), now=NOW) == verify_ear(
        token, key=KEY.public_key(), now=NOW)


def test_oversized_token_is_malformed() -> None:
    head, body, sig = _token().split(".")
    _refused(f"{head}.{body + 'A' * (64 * 1024)}.{sig}", "attestation.malformed")


def test_verifier_key_of_another_curve_is_refused() -> None:
    with pytest.raises(AttestationError) as info:
        verify_ear(_token(), key=ec.generate_private_key(ec.SECP384R1()).public_key(), now=NOW)
    assert info.value.code == "attestation.signature_invalid"
