"""Single-shot HPKE wrapper: RFC 9180 A.1.1 vector, round trips and refusals."""

from __future__ import annotations

import pytest

from medclave.crypto import hpke
from medclave.errors import MedclaveError
from tests.conftest import flip

# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
SK_R = bytes.fromhex("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
SK_E = bytes.fromhex("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736")
ENC = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")
AAD = bytes.fromhex("436f756e742d30")
CT = bytes.fromhex("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
                   "6d8770ac83d07bea87e13c512a")


def test_rfc9180_a11_base_mode_vector() -> None:
    pk_r = hpke.public_key_bytes(hpke.private_key_from_bytes(SK_R))
    sealed = hpke.seal(pk_r, PT, INFO, AAD, ephemeral_private_key=SK_E)
    assert sealed == ENC + CT
    assert hpke.open(SK_R, ENC + CT, INFO, AAD) == PT


def test_vector_flipped_byte_refused() -> None:
    for offset in (0, 31, 32, len(ENC + CT) - 1):
        with pytest.raises(MedclaveError) as err:
            hpke.open(SK_R, flip(ENC + CT, offset), INFO, AAD)
        assert err.value.code == "crypto.decrypt_failed"


def test_round_trip_and_context_binding() -> None:
    key, public = hpke.generate_keypair()
    sealed = hpke.seal(public, b"model key", b"info", b"aad")
    assert hpke.open(key, sealed, b"info", b"aad") == b"model key"
    assert hpke.open(hpke.private_key_bytes(key), sealed, b"info", b"aad") == b"model key"
    for info, aad in ((b"other", b"aad"), (b"info", b"other")):
        with pytest.raises(MedclaveError) as err:
            hpke.open(key, sealed, info, aad)
        assert err.value.code == "crypto.decrypt_failed"
    other, _ = hpke.generate_keypair()
    with pytest.raises(MedclaveError) as err:
        hpke.open(other, sealed, b"info", b"aad")
    assert err.value.code == "crypto.decrypt_failed"
    assert hpke.seal(public, b"x") != hpke.seal(public, b"x")  # fresh ephemeral each time


def test_bad_keys_and_short_input_refused() -> None:
    with pytest.raises(MedclaveError) as err:
        hpke.seal(b"\x01" * 31, b"x")
    assert err.value.code == "crypto.bad_key"
    with pytest.raises(MedclaveError) as err:  # low-order point: all-zero shared secret
        hpke.seal(bytes(32), b"x")
    assert err.value.code == "crypto.bad_key"
    with pytest.raises(MedclaveError) as err:
        hpke.private_key_from_bytes(b"short")
    assert err.value.code == "crypto.bad_key"
    key, _ = hpke.generate_keypair()
    with pytest.raises(MedclaveError) as err:
        hpke.open(key, b"\x00" * 47)
    assert err.value.code == "crypto.decrypt_failed"
    with pytest.raises(MedclaveError) as err:  # low-order encapsulated key
        hpke.open(key, bytes(32) + bytes(16))
    assert err.value.code == "crypto.decrypt_failed"
