"""Binary HTTP (RFC 9292): the §5 examples byte for byte, round trips, strict refusals, fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.crypto import bhttp
from medclave.crypto.bhttp import InformationalResponse, Limits, Request, Response
from medclave.crypto.varint import decode_varint, encode_varint
from medclave.errors import MedclaveError


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 9292 §5.1, Figure: Known-Length Binary Encoding of Request
RFC_REQUEST_KNOWN = h("""
00034745 54056874 74707300 0a2f6865 6c6c6f2e 74787440 6c0a7573 65722d61
67656e74 34637572 6c2f372e 31362e33 206c6962 6375726c 2f372e31 362e3320
4f70656e 53534c2f 302e392e 376c207a 6c69622f 312e322e 3304686f 73740f77
77772e65 78616d70 6c652e63 6f6d0f61 63636570 742d6c61 6e677561 67650665
6e2c206d 690000
""")
# RFC 9292 §5.1, Figure: Indeterminate-Length Binary Encoding of Request (10 bytes of padding)
RFC_REQUEST_INDETERMINATE = h("""
02034745 54056874 74707300 0a2f6865 6c6c6f2e 7478740a 75736572 2d616765
6e743463 75726c2f 372e3136 2e33206c 69626375 726c2f37 2e31362e 33204f70
656e5353 4c2f302e 392e376c 207a6c69 622f312e 322e3304 686f7374 0f777777
2e657861 6d706c65 2e636f6d 0f616363 6570742d 6c616e67 75616765 06656e2c
206d6900 00000000 00000000 00000000
""")
RFC_REQUEST = Request(
    "GET", "https", "", "/hello.txt",
    (("user-agent", "curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
     ("host", "www.example.com"), ("accept-language", "en, mi")),
)
# RFC 9292 §5.2, Figure: Binary Response, including Informational Responses
RFC_RESPONSE_INDETERMINATE = h("""
03406607 72756e6e 696e670a 22736c65 65702031 35220040 67046c69 6e6b233c
2f737479 6c652e63 73733e3b 2072656c 3d707265 6c6f6164 3b206173 3d737479
6c65046c 696e6b24 3c2f7363 72697074 2e6a733e 3b207265 6c3d7072 656c6f61
643b2061 733d7363 72697074 0040c804 64617465 1d4d6f6e 2c203237 204a756c
20323030 39203132 3a32383a 35332047 4d540673 65727665 72064170 61636865
0d6c6173 742d6d6f 64696669 65641d57 65642c20 3232204a 756c2032 30303920
31393a31 353a3536 20474d54 04657461 67142233 34616133 38372d64 2d313536
38656230 30220d61 63636570 742d7261 6e676573 05627974 65730e63 6f6e7465
6e742d6c 656e6774 68023531 04766172 790f4163 63657074 2d456e63 6f64696e
670c636f 6e74656e 742d7479 70650a74 6578742f 706c6169 6e003348 656c6c6f
20576f72 6c642120 4d792063 6f6e7465 6e742069 6e636c75 64657320 61207472
61696c69 6e672043 524c462e 0d0a0000
""")
RFC_RESPONSE = Response(
    200,
    (("date", "Mon, 27 Jul 2009 12:28:53 GMT"), ("server", "Apache"),
     ("last-modified", "Wed, 22 Jul 2009 19:15:56 GMT"), ("etag", '"34aa387-d-1568eb00"'),
     ("accept-ranges", "bytes"), ("content-length", "51"), ("vary", "Accept-Encoding"),
     ("content-type", "text/plain")),
    b"Hello World! My content includes a trailing CRLF.\r\n",
    (InformationalResponse(102, (("running", '"sleep 15"'),)),
     InformationalResponse(103, (("link", "</style.css>; rel=preload; as=style"),
                                 ("link", "</script.js>; rel=preload; as=script")))),
)
# RFC 9292 §5.2, Figure: Known-Length Encoding of Response (the chunked example)
RFC_CHUNKED_KNOWN = h("""
0140c800 1d546869 7320636f 6e74656e 7420636f 6e746169 6e732043 524c462e
0d0a0d07 74726169 6c657204 74657874
""")
RFC_CHUNKED = Response(200, (), b"This content contains CRLF.\r\n", (), (("trailer", "text"),))


def test_rfc9292_known_length_request() -> None:
    assert bhttp.decode_request(RFC_REQUEST_KNOWN) == RFC_REQUEST
    assert RFC_REQUEST.encode() == RFC_REQUEST_KNOWN
    # §5.1: the last two bytes (content and trailers) can each be removed.
    assert bhttp.decode_request(RFC_REQUEST_KNOWN[:-1]) == RFC_REQUEST
    assert bhttp.decode_request(RFC_REQUEST_KNOWN[:-2]) == RFC_REQUEST
    assert RFC_REQUEST.encode(truncate=True) == RFC_REQUEST_KNOWN[:-2]


def test_rfc9292_indeterminate_length_request() -> None:
    assert bhttp.decode_request(RFC_REQUEST_INDETERMINATE) == RFC_REQUEST
    assert RFC_REQUEST.encode(indeterminate=True, padding=10) == RFC_REQUEST_INDETERMINATE
    # §5.1: anything up to 12 bytes can be removed without changing the meaning.
    for cut in range(13):
        assert bhttp.decode_request(RFC_REQUEST_INDETERMINATE[:-cut or None]) == RFC_REQUEST
    with pytest.raises(MedclaveError) as err:
        bhttp.decode_request(RFC_REQUEST_INDETERMINATE[:-13])
    assert err.value.code == "protocol.bad_message"


def test_rfc9292_response_with_informational() -> None:
    assert bhttp.decode_response(RFC_RESPONSE_INDETERMINATE) == RFC_RESPONSE
    assert RFC_RESPONSE.encode(indeterminate=True) == RFC_RESPONSE_INDETERMINATE
    assert bhttp.decode(RFC_RESPONSE_INDETERMINATE) == RFC_RESPONSE


def test_rfc9292_known_length_response_with_trailer() -> None:
    assert bhttp.decode_response(RFC_CHUNKED_KNOWN) == RFC_CHUNKED
    assert RFC_CHUNKED.encode() == RFC_CHUNKED_KNOWN


def test_rfc9458_minimal_messages() -> None:
    # RFC 9458 Appendix A uses truncated known-length messages.
    request = h("00034745540568747470730b6578616d706c652e636f6d012f")
    assert bhttp.decode_request(request) == Request("GET", "https", "example.com", "/")
    assert Request("GET", "https", "example.com", "/").encode(truncate=True) == request
    assert bhttp.decode_response(h("0140c8")) == Response(200)
    assert Response(200).encode(truncate=True) == h("0140c8")


def test_streaming_helpers_match_the_whole_message_encoding() -> None:
    streamed = (bhttp.response_head(200, RFC_RESPONSE.headers, RFC_RESPONSE.informational)
                + bhttp.content_chunk(RFC_RESPONSE.content[:10]) + bhttp.content_chunk(b"")
                + bhttp.content_chunk(RFC_RESPONSE.content[10:]) + bhttp.response_end())
    assert bhttp.decode_response(streamed) == RFC_RESPONSE


@pytest.mark.parametrize(("raw", "value"), [
    # RFC 9000 Appendix A.1 examples, including a non-minimal one.
    ("c2197c5eff14e88c", 151288809941952652), ("9d7f3e7d", 494878333),
    ("7bbd", 15293), ("25", 37), ("4025", 37),
])
def test_varint_rfc9000_examples(raw: str, value: int) -> None:
    assert decode_varint(bytes.fromhex(raw), 0) == (value, len(raw) // 2)
    assert decode_varint(encode_varint(value), 0)[0] == value


def test_varint_refuses_out_of_range_and_truncation() -> None:
    with pytest.raises(MedclaveError):
        encode_varint(1 << 62)
    with pytest.raises(MedclaveError):
        decode_varint(b"\x80\x00", 0)


@pytest.mark.parametrize(("raw", "code"), [
    ("04", "protocol.bad_message"),  # framing indicator 4
    ("01", "protocol.bad_message"),  # a response where a request is expected
    ("0003474554", "protocol.bad_message"),  # truncated inside control data
    ("000347455405687474707300012f0a02414201610000", "protocol.bad_message"),  # name "AB"
    ("000347455405687474707300012f0a073a6d6574686f6400", "protocol.bad_message"),  # :method
    ("000347455405687474707300012f0003", "protocol.bad_message"),  # content overruns
    ("000347455405687474707300012f00000001", "protocol.bad_message"),  # non-zero padding
    ("000347455405687474707300012f04016102620000", "protocol.bad_message"),  # field overruns
    ("000347455405687474707300012f0501610201200000", "protocol.bad_message"),  # value " ..."
    ("000347455405687474707300012f050161020a0a0000", "protocol.bad_message"),  # value LF
    ("00034745540568747470730000", "protocol.bad_message"),  # empty path for https
    ("0003474554056874747073036140620000", "protocol.bad_message"),  # userinfo in authority
    ("0203474554056874747073000000012f016101", "protocol.bad_message"),  # header unterminated
    ("0203474554056874747073000000012f00036162", "protocol.bad_message"),  # chunk unterminated
])
def test_invalid_requests_refused(raw: str, code: str) -> None:
    with pytest.raises(MedclaveError) as err:
        bhttp.decode_request(bytes.fromhex(raw))
    assert err.value.code == code


def test_invalid_responses_refused() -> None:
    for raw in ("0140", "01", "0140630000", "014258", "0300", "0140c80003"):  # 99, 600, 0
        with pytest.raises(MedclaveError):
            bhttp.decode_response(bytes.fromhex(raw))


def test_limits_are_enforced() -> None:
    many = Request("GET", "https", "a", "/", tuple((f"x-{i}", "v") for i in range(20)))
    with pytest.raises(MedclaveError) as err:
        bhttp.decode_request(many.encode(), Limits(max_fields=10))
    assert err.value.code == "input.too_large"
    big = Request("GET", "https", "a", "/", (("x", "v" * 5000),))
    for indeterminate in (False, True):
        with pytest.raises(MedclaveError) as err:
            bhttp.decode_request(big.encode(indeterminate=indeterminate),
                                 Limits(max_field_section=1000))
        assert err.value.code == "input.too_large"
    with pytest.raises(MedclaveError) as err:
        bhttp.decode_request(big.encode(), Limits(max_message=100))
    assert err.value.code == "input.too_large"
    infos = Response(200, informational=tuple(InformationalResponse(103) for _ in range(9)))
    with pytest.raises(MedclaveError) as err:
        bhttp.decode_response(infos.encode())
    assert err.value.code == "input.too_large"


def test_encoder_refuses_what_the_decoder_would() -> None:
    for bad in (Request("GET", "https", "a", "/", (("x", "a\r\nb"),)),
                Request("G T", "https", "a", "/"),
                Request("GET", "https", "a", "/", ((":path", "/"),)),
                Request("GET", "https", "a", "/", (("x", "\u20ac"),))):
        with pytest.raises(MedclaveError):
            bad.encode()
    with pytest.raises(MedclaveError):
        Response(99).encode()
    with pytest.raises(MedclaveError):
        Response(200, informational=(InformationalResponse(200),)).encode()


def test_names_are_lowercased_and_obs_text_survives() -> None:
    request = Request("POST", "https", "h", "/", (("Content-Type", "caf\xe9"),), b"\x00\xff")
    decoded = bhttp.decode_request(request.encode())
    assert decoded.headers == (("content-type", "caf\xe9"),)
    assert decoded.header("Content-Type") == "caf\xe9"
    assert decoded.content == b"\x00\xff"


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF),
                 max_size=20) | st.just("")
_fields = st.lists(st.tuples(_token, _value), max_size=6).map(tuple)
_requests = st.builds(
    Request, st.sampled_from(["GET", "POST", "PUT"]), st.sampled_from(["https", "http"]),
    st.sampled_from(["", "example.com", "h:8443"]), st.sampled_from(["/", "/v1/chat?x=1"]),
    _fields, st.binary(max_size=64), _fields)
_responses = st.builds(
    Response, st.integers(200, 599), _fields, st.binary(max_size=64),
    st.lists(st.builds(InformationalResponse, st.integers(100, 199), _fields),
             max_size=3).map(tuple), _fields)


@settings(max_examples=150, deadline=None)
@given(message=_requests | _responses, indeterminate=st.booleans(), truncate=st.booleans(),
       padding=st.integers(0, 8))
def test_round_trip(message: Request | Response, indeterminate: bool, truncate: bool,
                    padding: int) -> None:
    encoded = message.encode(indeterminate=indeterminate, truncate=truncate, padding=padding)
    assert bhttp.decode(encoded) == message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=st.sampled_from([RFC_REQUEST_KNOWN, RFC_REQUEST_INDETERMINATE,
                                             RFC_RESPONSE_INDETERMINATE, RFC_CHUNKED_KNOWN]))
def test_mutated_input_raises_only_medclave_errors(data: st.DataObject, base: bytes) -> None:
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if op == "flip" and mutated:
            mutated[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del mutated[pos:pos + data.draw(st.integers(1, 8))]
        else:
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(MedclaveError):
        bhttp.decode(bytes(mutated))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_random_input_raises_only_medclave_errors(raw: bytes) -> None:
    for decoder in (bhttp.decode, bhttp.decode_request, bhttp.decode_response):
        with contextlib.suppress(MedclaveError):
            decoder(raw)
