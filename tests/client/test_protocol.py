"""The shared wire pieces: inner requests, nonces, receipts, the enclave runtime, and the
incremental Binary HTTP decoder that reads streamed answers (bounded, fuzzed)."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.crypto import bhttp
from medclave.crypto.ohttp import OhttpKeyPair
from medclave.errors import AttestationError, InputError, MedclaveError
from medclave.protocol import inference as proto
from medclave.protocol.bhttp_stream import ResponseStreamDecoder

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def test_inner_request_round_trip_keeps_only_what_the_api_needs() -> None:
    raw = proto.encode_inner_request("POST", "/v1/chat/completions?x=1", body=b'{"a":1}',
                                     authorization="Bearer tok",
                                     extra_headers=(("X-Forwarded-For", "10.0.0.1"),))
    got = proto.decode_inner_request(raw)
    assert (got.method, got.path, got.body) == ("POST", "/v1/chat/completions", b'{"a":1}')
    assert got.header("authorization") == "Bearer tok"
    assert got.header("x-forwarded-for") is None
    assert got.header_map()["content-type"] == "application/json"
    doubled = proto.InnerRequest("POST", "/", (("authorization", "Bearer a"),
                                               ("authorization", "Bearer b")), b"")
    assert doubled.header_map()["authorization"] == "Bearer a, Bearer b"  # refused by auth
    with pytest.raises(InputError):
        proto.encode_inner_request("POST", "/v1/completions", body=b"x" * (2 * 1024 * 1024))


@pytest.mark.parametrize("text", ["", "ab", "ab" * 15, "ab" * 65, "AB" * 16, "zz" * 16])
def test_nonces_are_16_to_64_bytes_of_lower_hex(text: str) -> None:
    with pytest.raises(InputError):
        proto.parse_nonce(text)


def test_a_good_nonce_parses() -> None:
    assert proto.parse_nonce("ab" * 32) == b"\xab" * 32


def test_receipt_header_round_trip() -> None:
    data = b'{"v":1,"entry":{}}' * 50
    assert proto.decode_receipt_header(proto.encode_receipt_header(data)) == data
    with pytest.raises(InputError):
        proto.decode_receipt_header("a" * 200_000)


@pytest.mark.parametrize("text", ["QU!JD", "QUJD=", "QUJ", "QU JD", "Q"])
def test_receipt_header_has_one_text_form(text: str) -> None:
    """"QUJD" is b"ABC" and "QUI" is b"AB"; the lax decoder also read "QU!JD" and "QUJD=" as
    b"ABC" and "QUJ" (non-zero pad bits) as b"AB": each is refused now."""
    assert proto.decode_receipt_header("QUJD") == b"ABC"
    assert proto.decode_receipt_header("QUI") == b"AB"
    with pytest.raises(InputError) as err:
        proto.decode_receipt_header(text)
    assert err.value.code == "input.malformed"


def _runtime(**changes: object) -> dict[str, object]:
    runtime: dict[str, object] = {
        "ohttp_key_config": base64.b64encode(OhttpKeyPair.generate(3).config.encode()).decode(),
        "model_digest": "ab" * 32, "model_id": "m", "engine": "llama.cpp",
        "engine_build": "b", "audit_public_key": base64.b64encode(b"k" * 32).decode(),
        "audit_origin": "origin"}
    runtime.update(changes)
    return runtime


@pytest.mark.parametrize("changes", [
    {"model_digest": None}, {"ohttp_key_config": "!!"}, {"ohttp_key_config": "AAAA"},
    {"audit_public_key": base64.b64encode(b"short").decode()},
])
def test_an_enclave_runtime_missing_or_malformed_is_refused(changes: dict[str, object]) -> None:
    runtime = {k: v for k, v in _runtime(**changes).items() if v is not None}
    with pytest.raises(AttestationError) as caught:
        parsed = proto.EnclaveRuntime.from_runtime(runtime)
        parsed.key_config()
        parsed.audit_key()
    assert caught.value.code == "attestation.malformed"


# --- streamed Binary HTTP --------------------------------------------------------------------

HEADERS = (("content-type", "text/event-stream"), ("x-request-id", "r1"))
TRAILERS = (("medclave-receipt", "abc"),)


def _streamed(pieces: list[bytes], trailers: bhttp.Fields = TRAILERS) -> bytes:
    return (bhttp.response_head(200, HEADERS) + b"".join(bhttp.content_chunk(p) for p in pieces)
            + bhttp.response_end(trailers))


def _decode(data: bytes, cuts: list[int], limits: bhttp.Limits = bhttp.DEFAULT_LIMITS
            ) -> tuple[ResponseStreamDecoder, bytes]:
    decoder = ResponseStreamDecoder(limits)
    out: list[bytes] = []
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        out.extend(decoder.feed(data[last:cut]))
        last = cut
    out.extend(decoder.feed(data[last:]))
    out.extend(decoder.close())
    return decoder, b"".join(out)


@FUZZ
@given(pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_streamed_response_decodes_the_same_however_it_is_cut(pieces: list[bytes],
                                                              cuts: list[int]) -> None:
    decoder, content = _decode(_streamed(pieces), cuts)
    assert content == b"".join(pieces)
    assert (decoder.status, decoder.headers, decoder.trailers) == (200, HEADERS, TRAILERS)
    assert decoder.done


def test_streamed_response_hands_content_out_as_soon_as_it_is_whole() -> None:
    decoder = ResponseStreamDecoder()
    head = bhttp.response_head(200, HEADERS)
    assert decoder.feed(head[:-1]) == [] and not decoder.head_complete
    assert decoder.feed(head[-1:] + bhttp.content_chunk(b"hello")) == [b"hello"]
    assert decoder.header("x-request-id") == "r1"
    assert decoder.feed(bhttp.response_end(TRAILERS)) == []
    assert decoder.trailer("medclave-receipt") == "abc"


def test_known_length_and_informational_responses_are_accepted() -> None:
    known = bhttp.Response(201, HEADERS, b"whole").encode()
    assert _decode(known, [3, 9])[1] == b"whole"
    info = bhttp.Response(200, HEADERS, b"body",
                          informational=(bhttp.InformationalResponse(103),)).encode(
        indeterminate=True)
    decoder, content = _decode(info, [1, 2, 5])
    assert content == b"body" and decoder.status == 200


@pytest.mark.parametrize("cut", [1, 10, 40])
def test_a_stream_cut_inside_a_part_is_refused(cut: int) -> None:
    data = _streamed([b"x" * 30])
    decoder = ResponseStreamDecoder()
    decoder.feed(data[:cut])
    with pytest.raises(MedclaveError) as caught:
        decoder.close()
    assert caught.value.code == "protocol.bad_message"
    with pytest.raises(MedclaveError):  # sticky
        decoder.feed(b"")


def test_a_stream_beyond_its_limits_is_refused() -> None:
    limits = bhttp.Limits(max_message=1000, max_field_section=200)
    with pytest.raises(InputError):
        _decode(_streamed([b"x" * 600, b"y" * 600]), [], limits)
    with pytest.raises(InputError):
        _decode(bhttp.response_head(200, (("x", "v" * 300),)) + b"\x00", [], limits)
    decoder = ResponseStreamDecoder(limits)
    decoder.feed(bhttp.response_head(200, HEADERS))
    with pytest.raises(InputError):  # a chunk announced past the limit, still arriving
        decoder.feed(b"\x80\x00\x10\x00" + b"z" * 100)


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_never_escape_as_anything_but_a_refusal(data: bytes, cuts: list[int]
                                                             ) -> None:
    with contextlib.suppress(MedclaveError):
        _decode(data, cuts)


@FUZZ
@given(position=st.integers(min_value=0), value=st.integers(0, 255),
       cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_mutated_streams_never_escape_as_anything_but_a_refusal(position: int, value: int,
                                                                cuts: list[int]) -> None:
    data = bytearray(_streamed([b"alpha" * 20, b"beta" * 30]))
    data[position % len(data)] = value
    with contextlib.suppress(MedclaveError):
        _decode(bytes(data), cuts)
