"""Security review of the crypto layer: each test pins one weakness found and fixed."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.crypto.jws import b64url, verify_es256
from medclave.errors import CryptoError


@pytest.mark.parametrize("part", [0, 1])
def test_jws_with_deeply_nested_json_is_a_crypto_error(part: int) -> None:
    """Parsed before the signature is checked: an unauthenticated token must not be able to
    raise RecursionError (it escaped every ``except MedclaveError`` in the EAR path)."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    parts = [b64url(b'{"alg":"ES256"}'), b64url(b"{}"), b64url(bytes(64))]
    parts[part] = b64url(b"[" * 20_000)
    with pytest.raises(CryptoError) as info:
        verify_es256(".".join(parts), key)
    assert info.value.code == "protocol.bad_message"
