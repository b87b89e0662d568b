"""Oblivious HTTP (RFC 9458): Appendix A byte for byte, key configs, refusals, fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.crypto import bhttp, ohttp
from medclave.crypto.ohttp import (
    KeyConfig,
    OhttpKeyPair,
    SymmetricAlgorithm,
    decapsulate_request,
    encapsulate_request,
)
from medclave.errors import MedclaveError
from tests.conftest import flip

# RFC 9458 Appendix A
SK_R = bytes.fromhex("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
KEY_CONFIG = bytes.fromhex("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e"
                           "79815500080001000100010003")
REQUEST = bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f")
SK_E = bytes.fromhex("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73")
PK_E = bytes.fromhex("4b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472")
INFO = bytes.fromhex("6d6573736167652f626874747020726571756573740001002000010001")
ENC_REQUEST = bytes.fromhex(
    "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1"
    "9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796"
    "5e7d86b83dd440b2c0185204b4d63525")
RESPONSE = bytes.fromhex("0140c8")
SECRET = bytes.fromhex("62d87a6ba569ee81014c2641f52bea36")
RESPONSE_NONCE = bytes.fromhex("c789e7151fcba46158ca84b04464910d")
AEAD_KEY = bytes.fromhex("5d0172a080e428b16d298c4ea0db620d")
AEAD_NONCE = bytes.fromhex("f6bf1aeb88d6df87007fa263")
ENC_RESPONSE = bytes.fromhex("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f"
                             "857fbd")

GATEWAY = OhttpKeyPair.from_private_bytes(1, SK_R)


def test_rfc9458_key_configuration() -> None:
    config = KeyConfig.decode(KEY_CONFIG)
    assert config.key_id == 1
    assert config.kem_id == 0x0020
    assert config.public_key == GATEWAY.config.public_key
    assert config.symmetric == (SymmetricAlgorithm(1, 1), SymmetricAlgorithm(1, 3))
    assert config.encode() == KEY_CONFIG
    assert KeyConfig(1, 0x20, GATEWAY.config.public_key, config.symmetric).encode() == KEY_CONFIG


def test_rfc9458_request_encapsulation() -> None:
    assert bhttp.Request("GET", "https", "example.com", "/").encode(truncate=True) == REQUEST
    assert ohttp.request_info(ohttp.REQUEST_LABEL, ohttp.request_header(1)) == INFO
    encapsulated, _ = encapsulate_request(KeyConfig.decode(KEY_CONFIG), REQUEST,
                                          ephemeral_private_key=SK_E)
    assert encapsulated == ENC_REQUEST
    assert encapsulated[7:39] == PK_E


def test_rfc9458_gateway_decapsulates_and_encapsulates_response() -> None:
    plaintext, context = GATEWAY.decapsulate_request(ENC_REQUEST)
    assert plaintext == REQUEST
    assert bhttp.Response(200).encode(truncate=True) == RESPONSE
    assert context.encapsulate(RESPONSE, response_nonce=RESPONSE_NONCE) == ENC_RESPONSE


def test_rfc9458_response_key_derivation() -> None:
    key, nonce = ohttp.derive_response_keys(SECRET, PK_E, RESPONSE_NONCE)
    assert (key, nonce) == (AEAD_KEY, AEAD_NONCE)


def test_rfc9458_client_decapsulates_response() -> None:
    _, client = encapsulate_request(KeyConfig.decode(KEY_CONFIG), REQUEST,
                                    ephemeral_private_key=SK_E)
    assert client.decapsulate_response(ENC_RESPONSE) == RESPONSE


def test_round_trip_with_generated_keys() -> None:
    gateway = OhttpKeyPair.generate(7)
    config = KeyConfig.decode(gateway.config.encode())
    body = bhttp.Request("POST", "https", "enclave", "/v1/chat/completions",
                         (("authorization", "Bearer t"),), b'{"messages":[]}').encode()
    encapsulated, client = encapsulate_request(config, body)
    plaintext, context = gateway.decapsulate_request(encapsulated)
    assert plaintext == body
    answer = bhttp.Response(200, (("content-type", "application/json"),), b"{}").encode()
    assert client.decapsulate_response(context.encapsulate(answer)) == answer
    with pytest.raises(MedclaveError):  # a response context seals exactly one response
        context.encapsulate(answer)


def test_every_flipped_request_byte_is_refused() -> None:
    for offset in range(len(ENC_REQUEST)):
        with pytest.raises(MedclaveError) as err:
            GATEWAY.decapsulate_request(flip(ENC_REQUEST, offset))
        expected = {0: "crypto.key_unknown"}.get(offset, "crypto.decrypt_failed")
        if 1 <= offset < 7:
            expected = "crypto.unsupported_suite"
        assert err.value.code == expected, offset


def test_every_flipped_response_byte_is_refused() -> None:
    _, client = encapsulate_request(KeyConfig.decode(KEY_CONFIG), REQUEST,
                                    ephemeral_private_key=SK_E)
    for offset in range(len(ENC_RESPONSE)):
        with pytest.raises(MedclaveError) as err:
            client.decapsulate_response(flip(ENC_RESPONSE, offset))
        assert err.value.code == "crypto.decrypt_failed"


def test_wrong_key_id_and_key_rotation() -> None:
    other = OhttpKeyPair.generate(2)
    with pytest.raises(MedclaveError) as err:
        other.decapsulate_request(ENC_REQUEST)
    assert err.value.code == "crypto.key_unknown"
    # During a rotation the gateway holds both keys and picks by key id.
    assert decapsulate_request([other, GATEWAY], ENC_REQUEST)[0] == REQUEST
    # Same id, different key: the HPKE open fails.
    impostor = OhttpKeyPair.generate(1)
    with pytest.raises(MedclaveError) as err:
        impostor.decapsulate_request(ENC_REQUEST)
    assert err.value.code == "crypto.decrypt_failed"


def test_truncated_and_oversized_messages_refused() -> None:
    for size in (0, 3, 7, 38, 39, 54):
        with pytest.raises(MedclaveError):
            GATEWAY.decapsulate_request(ENC_REQUEST[:size])
    with pytest.raises(MedclaveError) as err:
        GATEWAY.decapsulate_request(ENC_REQUEST, max_size=50)
    assert err.value.code == "input.too_large"
    _, client = encapsulate_request(GATEWAY.config, REQUEST)
    with pytest.raises(MedclaveError) as err:
        client.decapsulate_response(ENC_RESPONSE[:31])
    assert err.value.code == "crypto.decrypt_failed"


def test_unsupported_suites_refused() -> None:
    chacha_only = KeyConfig(1, 0x20, GATEWAY.config.public_key, (SymmetricAlgorithm(1, 3),))
    with pytest.raises(MedclaveError) as err:
        encapsulate_request(chacha_only, REQUEST)
    assert err.value.code == "crypto.unsupported_suite"
    p256 = KeyConfig(1, 0x10, b"\x04" + bytes(64))
    with pytest.raises(MedclaveError) as err:
        encapsulate_request(p256, REQUEST)
    assert err.value.code == "crypto.unsupported_suite"


def test_ohttp_keys_list() -> None:
    second = OhttpKeyPair.generate(9).config
    p256 = KeyConfig(3, 0x10, b"\x04" + bytes(64))
    listed = ohttp.encode_keys([KeyConfig.decode(KEY_CONFIG), p256, second])
    assert listed[:2] == len(KEY_CONFIG).to_bytes(2, "big")
    assert ohttp.decode_keys(listed) == (KeyConfig.decode(KEY_CONFIG), second)
    unknown_kem = b"\x00\x07\x05\x99\x99\x00\x00\x00\x00"
    assert ohttp.decode_keys(unknown_kem + ohttp.encode_keys([second])) == (second,)
    with pytest.raises(MedclaveError) as err:
        ohttp.decode_keys(ohttp.encode_keys([p256]))
    assert err.value.code == "crypto.unsupported_suite"
    for bad in (b"\x00", b"\x00\x05\x01", listed[:-1], b"\x00\x00"):
        with pytest.raises(MedclaveError):
            ohttp.decode_keys(bad)


@pytest.mark.parametrize("raw", [
    "", "01", "010020", KEY_CONFIG.hex()[:-2], KEY_CONFIG.hex() + "00",
    KEY_CONFIG.hex()[:68] + "0000", KEY_CONFIG.hex()[:68] + "000300010001",
])
def test_malformed_key_configs_refused(raw: str) -> None:
    with pytest.raises(MedclaveError):
        KeyConfig.decode(bytes.fromhex(raw))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_messages_raise_only_medclave_errors(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([ENC_REQUEST, ENC_RESPONSE, KEY_CONFIG]))
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(mutated)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and pos < len(mutated):
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del mutated[pos:pos + data.draw(st.integers(1, 40))]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=40))
    raw = bytes(mutated)
    _, client = encapsulate_request(GATEWAY.config, REQUEST)
    for parse in (client.decapsulate_response, KeyConfig.decode, ohttp.decode_keys):
        with contextlib.suppress(MedclaveError):
            parse(raw)
    try:
        GATEWAY.decapsulate_request(raw)
    except MedclaveError:
        return
    assert raw == ENC_REQUEST, "a mutated encapsulated request was accepted"
