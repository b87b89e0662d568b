"""Security review of the crypto layer: each test pins one weakness found and fixed."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.crypto.jose import (
    CRYPTO_ERRORS,
    Jwk,
    b64url_encode,
    parse_compact,
    verified_claims,
)
from medclave.errors import CryptoError


@pytest.mark.parametrize(("part", "code"), [(0, "protocol.bad_message"),
                                            (1, "crypto.signature_invalid")])
def test_jws_with_deeply_nested_json_is_a_crypto_error(part: int, code: str) -> None:
    """An unauthenticated token must not be able to raise RecursionError (it escaped every
    ``except MedclaveError`` in the EAR path). A deep header is refused by the bounded, strict
    header parser; a deep payload is never parsed, as its signature does not verify."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    parts = [b64url_encode(b'{"alg":"ES256"}'), b64url_encode(b"{}"), b64url_encode(bytes(64))]
    parts[part] = b64url_encode(b"[" * 20_000)
    with pytest.raises(CryptoError) as info:
        jws = parse_compact(".".join(parts), algorithms=frozenset({"ES256"}),
                            errors=CRYPTO_ERRORS, max_length=100_000)
        verified_claims(jws, Jwk.of(key))
    assert info.value.code == code
