"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08): Appendix A byte for byte, streaming,
truncation, reordering, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.crypto import bhttp
from medclave.crypto.ohttp import KeyConfig, OhttpKeyPair
from medclave.crypto.ohttp_chunked import (
    ChunkedRequestDecoder,
    ChunkedRequestEncoder,
    ChunkedResponseDecoder,
    ChunkedResponseEncoder,
)
from medclave.crypto.varint import encode_varint
from medclave.errors import MedclaveError
from tests.conftest import flip

# draft-ietf-ohai-chunked-ohttp-08, Appendix A
SK_R = bytes.fromhex("1c190d72acdbe4dbc69e680503bb781a932c70a12c8f3754434c67d8640d8698")
KEY_CONFIG = bytes.fromhex("010020668eb21aace159803974a4c67f08b4152d29bed10735fd08f98ccdd6fe"
                           "09570800080001000100010003")
REQUEST = bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f")
SK_E = bytes.fromhex("b26d565f3f875ed480d1abced3d665159650c99174fd0b124ac4bda0c64ae324")
HEADER = bytes.fromhex("01002000010001"
                       "8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032")
REQ_CHUNKS = [bytes.fromhex(x) for x in (
    "1c2ad24942d4d692563012f2980c8fef437a336b9b2fc938ef77a5834f",
    "1d2e33d8fd25577afe31bd1c79d094f76b6250ae6549b473ecd950501311",
    "001c6c1395d0ef7c1022297966307b8a7f")]
ENC_REQUEST = HEADER + b"".join(REQ_CHUNKS)
RESPONSE = bytes.fromhex("0140c8")
RESPONSE_NONCE = bytes.fromhex("bcce7f4cb921309ba5d62edf1769ef09")
RES_CHUNKS = [bytes.fromhex(x) for x in (
    "1179bf1cc87fa0e2c02de4546945aa3d1e48",
    "12b348b5bd4c594c16b6170b07b475845d1f32",
    "00ed9d8a796617a5b27265f4d73247f639")]
ENC_RESPONSE = RESPONSE_NONCE + b"".join(RES_CHUNKS)

GATEWAY = OhttpKeyPair.from_private_bytes(1, SK_R)


def _client() -> ChunkedRequestEncoder:
    return ChunkedRequestEncoder(KeyConfig.decode(KEY_CONFIG), ephemeral_private_key=SK_E)


def _decode_request(data: bytes, step: int | None = None) -> bytes:
    decoder = ChunkedRequestDecoder([GATEWAY])
    step = step or len(data) or 1
    out = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i:i + step])
    return b"".join(out + decoder.close())


def _response_decoder() -> ChunkedResponseDecoder:
    client = _client()
    client.final(REQUEST)
    return client.response_decoder()


def _decode_response(data: bytes) -> bytes:
    decoder = _response_decoder()
    return b"".join(decoder.feed(data) + decoder.close())


def test_draft_example_key_config() -> None:
    assert GATEWAY.config.public_key == KeyConfig.decode(KEY_CONFIG).public_key


def test_draft_example_request_byte_for_byte() -> None:
    client = _client()
    assert client.write(REQUEST[:12]) == HEADER + REQ_CHUNKS[0]
    assert client.write(REQUEST[12:]) == REQ_CHUNKS[1]
    assert client.final(b"") == REQ_CHUNKS[2]


def test_draft_example_request_decoded_in_any_slicing() -> None:
    for step in (1, 2, 7, 39, 40, len(ENC_REQUEST)):
        assert _decode_request(ENC_REQUEST, step) == REQUEST


def test_draft_example_response_byte_for_byte() -> None:
    decoder = ChunkedRequestDecoder([GATEWAY])
    assert decoder.feed(ENC_REQUEST) == [REQUEST[:12], REQUEST[12:]]
    assert decoder.close() == [b""]
    encoder = decoder.response_encoder(response_nonce=RESPONSE_NONCE)
    assert encoder.write(RESPONSE[:1]) == RESPONSE_NONCE + RES_CHUNKS[0]
    assert encoder.write(RESPONSE[1:]) == RES_CHUNKS[1]
    assert encoder.final() == RES_CHUNKS[2]


def test_draft_example_response_decoded_incrementally() -> None:
    decoder = _response_decoder()
    got = []
    for i in range(len(ENC_RESPONSE)):
        got += decoder.feed(ENC_RESPONSE[i:i + 1])
    assert got == [RESPONSE[:1], RESPONSE[1:]]  # non-final chunks are released as they arrive
    assert decoder.close() == [b""]


def test_streamed_bhttp_answer_round_trip() -> None:
    gateway = OhttpKeyPair.generate(4)
    client = ChunkedRequestEncoder(gateway.config)
    body = bhttp.Request("POST", "https", "e", "/v1/chat/completions", (), b"x" * 40000).encode()
    wire = client.write(body[:100]) + client.final(body[100:])
    server = ChunkedRequestDecoder([gateway])
    assert b"".join(server.feed(wire) + server.close()) == body
    encoder = server.response_encoder()
    parts = [encoder.write(bhttp.response_head(200, (("content-type", "text/event-stream"),)))]
    for token in (b"data: a\n\n", b"data: b\n\n"):
        parts.append(encoder.write(bhttp.content_chunk(token)))
    parts.append(encoder.final(bhttp.response_end()))
    decoder = client.response_decoder()
    plain = b"".join(p for part in parts for p in decoder.feed(part)) + b"".join(decoder.close())
    assert bhttp.decode_response(plain).content == b"data: a\n\ndata: b\n\n"


def test_large_writes_are_split_into_small_chunks() -> None:
    encoder = ChunkedResponseEncoder(b"s" * 16, b"e" * 32, chunk_size=1000)
    wire = encoder.write(b"a" * 2500) + encoder.final(b"b" * 1500)
    decoder = ChunkedResponseDecoder(b"s" * 16, b"e" * 32, max_chunk=1000)
    chunks = decoder.feed(wire) + decoder.close()
    assert [len(c) for c in chunks] == [1000, 1000, 500, 1000, 500]


@pytest.mark.parametrize("cut", [0, 5, 7, 39, 40, 50, len(HEADER) + len(REQ_CHUNKS[0]) + 3,
                                 len(HEADER) + len(REQ_CHUNKS[0]) + len(REQ_CHUNKS[1])])
def test_request_cut_before_final_chunk_is_truncated(cut: int) -> None:
    with pytest.raises(MedclaveError) as err:
        _decode_request(ENC_REQUEST[:cut])
    assert err.value.code == "crypto.truncated"


def test_cut_inside_final_chunk_fails_authentication() -> None:
    with pytest.raises(MedclaveError) as err:
        _decode_request(ENC_REQUEST[:-1])
    assert err.value.code == "crypto.decrypt_failed"
    with pytest.raises(MedclaveError) as err:
        _decode_response(ENC_RESPONSE[:-1])
    assert err.value.code == "crypto.decrypt_failed"


@pytest.mark.parametrize("cut", [0, 10, 16, 17, 20, 16 + len(RES_CHUNKS[0]),
                                 16 + len(RES_CHUNKS[0]) + len(RES_CHUNKS[1])])
def test_response_cut_before_final_chunk_is_truncated(cut: int) -> None:
    with pytest.raises(MedclaveError) as err:
        _decode_response(ENC_RESPONSE[:cut])
    assert err.value.code == "crypto.truncated"


@pytest.mark.parametrize("order", [
    [1, 0, 2],  # reordered
    [0, 2],  # a chunk dropped
    [0, 0, 1, 2],  # a chunk repeated
    [1, 2],  # the first chunk dropped
])
def test_reordered_dropped_or_repeated_chunks_refused(order: list[int]) -> None:
    request = HEADER + b"".join(REQ_CHUNKS[i] for i in order)
    with pytest.raises(MedclaveError) as err:
        _decode_request(request)
    assert err.value.code == "crypto.decrypt_failed"
    response = RESPONSE_NONCE + b"".join(RES_CHUNKS[i] for i in order)
    with pytest.raises(MedclaveError) as err:
        _decode_response(response)
    assert err.value.code == "crypto.decrypt_failed"


def test_final_chunk_reframed_as_non_final_refused() -> None:
    # Presenting the final chunk as a middle chunk (to append data after it) fails: its AAD.
    last = REQ_CHUNKS[2][1:]
    forged = HEADER + REQ_CHUNKS[0] + REQ_CHUNKS[1] + encode_varint(len(last)) + last + b"\x00"
    with pytest.raises(MedclaveError) as err:
        _decode_request(forged + bytes(16))
    assert err.value.code == "crypto.decrypt_failed"
    # ... and a non-final chunk presented as final fails too.
    forged = HEADER + REQ_CHUNKS[0] + b"\x00" + REQ_CHUNKS[1][1:]
    with pytest.raises(MedclaveError) as err:
        _decode_request(forged)
    assert err.value.code == "crypto.decrypt_failed"


def test_every_flipped_byte_refused() -> None:
    for offset in range(len(ENC_REQUEST)):
        with pytest.raises(MedclaveError):
            _decode_request(flip(ENC_REQUEST, offset))
    for offset in range(len(ENC_RESPONSE)):
        with pytest.raises(MedclaveError):
            _decode_response(flip(ENC_RESPONSE, offset))


def test_unknown_key_refused_on_the_first_bytes() -> None:
    decoder = ChunkedRequestDecoder([OhttpKeyPair.generate(9)])
    with pytest.raises(MedclaveError) as err:
        decoder.feed(ENC_REQUEST[:7])
    assert err.value.code == "crypto.key_unknown"
    with pytest.raises(MedclaveError):  # failures are sticky
        decoder.feed(ENC_REQUEST[7:])


def test_failure_is_sticky_and_end_is_final() -> None:
    decoder = ChunkedRequestDecoder([GATEWAY])
    with pytest.raises(MedclaveError):
        decoder.feed(flip(ENC_REQUEST, 50))
    with pytest.raises(MedclaveError):
        decoder.feed(b"")
    complete = ChunkedRequestDecoder([GATEWAY])
    complete.feed(ENC_REQUEST, end=True)
    with pytest.raises(MedclaveError):
        complete.feed(b"more")


def test_oversized_chunks_refused() -> None:
    encoder = ChunkedResponseEncoder(b"s" * 16, b"e" * 32, chunk_size=5000)
    wire = encoder.write(b"a" * 5000)
    decoder = ChunkedResponseDecoder(b"s" * 16, b"e" * 32, max_chunk=4096)
    with pytest.raises(MedclaveError) as err:
        decoder.feed(wire)
    assert err.value.code == "input.too_large"
    final = ChunkedResponseEncoder(b"s" * 16, b"e" * 32, chunk_size=5000).final(b"a" * 5000)
    decoder = ChunkedResponseDecoder(b"s" * 16, b"e" * 32, max_chunk=4096)
    with pytest.raises(MedclaveError) as err:
        decoder.feed(final)
    assert err.value.code == "input.too_large"


def test_encoders_refuse_use_after_final() -> None:
    client = _client()
    client.final(b"")
    with pytest.raises(MedclaveError):
        client.write(b"x")
    encoder = ChunkedResponseEncoder(b"s" * 16, b"e" * 32)
    encoder.final(b"")
    with pytest.raises(MedclaveError):
        encoder.final(b"")


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(st.binary(max_size=300), max_size=6), final=st.binary(max_size=300),
       step=st.integers(1, 97))
def test_round_trip_any_chunking(pieces: list[bytes], final: bytes, step: int) -> None:
    client = ChunkedRequestEncoder(GATEWAY.config)
    wire = b"".join(client.write(p) for p in pieces) + client.final(final)
    assert _decode_request(wire, step) == b"".join(pieces) + final
    server = ChunkedRequestDecoder([GATEWAY])
    server.feed(wire, end=True)
    encoder = server.response_encoder()
    answer = b"".join(encoder.write(p) for p in pieces) + encoder.final(final)
    decoder = client.response_decoder()
    got = []
    for i in range(0, len(answer), step):
        got += decoder.feed(answer[i:i + step])
    assert b"".join(got + decoder.close()) == b"".join(pieces) + final


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_streams_raise_only_medclave_errors(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([ENC_REQUEST, ENC_RESPONSE]))
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(mutated)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and pos < len(mutated):
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del mutated[pos:pos + data.draw(st.integers(1, 20))]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=20))
    raw = bytes(mutated)
    step = data.draw(st.integers(1, 50))
    for decode, plaintext in ((_decode_request, REQUEST), (_decode_response, RESPONSE)):
        try:
            decoded = decode(raw) if decode is _decode_response else decode(raw, step)
        except MedclaveError:
            continue
        # Only the length prefixes are unauthenticated (§6: a varint may be re-encoded); the
        # content that comes out must be exactly what was sealed.
        assert decoded == plaintext, "a mutated stream was accepted"
