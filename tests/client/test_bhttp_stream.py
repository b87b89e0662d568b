"""The one streamed Binary HTTP decoder (``protocol.bhttp_stream``) against the whole-message
decoder of ``crypto.bhttp``: the RFC 9292 §5 examples in every slicing, truncation and garbage
refused, round trips and random input (hypothesis)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.crypto import bhttp
from medclave.crypto.bhttp import Response
from medclave.errors import MedclaveError
from medclave.protocol.bhttp_stream import ResponseStreamDecoder
from tests.crypto.test_bhttp import RFC_CHUNKED_KNOWN, RFC_RESPONSE_INDETERMINATE, _responses, h


def _stream(raw: bytes, step: int) -> tuple[ResponseStreamDecoder, bytes]:
    decoder = ResponseStreamDecoder()
    content = bytearray()
    for i in range(0, len(raw), step):
        for piece in decoder.feed(raw[i:i + step]):
            content += piece
    for piece in decoder.close():
        content += piece
    return decoder, bytes(content)


@pytest.mark.parametrize("raw", [RFC_RESPONSE_INDETERMINATE, RFC_CHUNKED_KNOWN, h("0140c8"),
                                 h("0340c800"), h("0140c80000"), h("0140c8000000000000")])
def test_stream_decoder_matches_whole_message_decoder(raw: bytes) -> None:
    whole = bhttp.decode_response(raw)
    for step in (1, 3, 17, len(raw)):
        decoder, content = _stream(raw, step)
        assert (decoder.status, decoder.headers, decoder.trailers) == (
            whole.status, whole.headers, whole.trailers)
        assert content == whole.content and decoder.done


def test_stream_decoder_releases_content_before_the_end() -> None:
    decoder = ResponseStreamDecoder()
    assert decoder.feed(bhttp.response_head(200, (("content-type", "text/event-stream"),))) == []
    assert decoder.head_complete and decoder.status == 200
    # Each chunk is handed out as soon as it is whole, before the message ends.
    assert decoder.feed(bhttp.content_chunk(b"data: hello\n\n")[:7]) == []
    assert decoder.feed(bhttp.content_chunk(b"data: hello\n\n")[7:]) == [b"data: hello\n\n"]
    assert decoder.feed(bhttp.response_end((("x-audit", "r1"),))) == []
    assert decoder.done
    assert decoder.close() == [] and decoder.trailer("x-audit") == "r1"


@pytest.mark.parametrize("raw", [
    "", "03", "0340", "0340c80161", "0340c80003616263", "0340c800000161",
    "0140c8000561", "0140c80000026162", "0340c80000000001",
])
def test_stream_decoder_refuses_truncation_and_garbage(raw: str) -> None:
    decoder = ResponseStreamDecoder()
    with pytest.raises(MedclaveError):
        decoder.feed(bytes.fromhex(raw))
        decoder.close()


@settings(max_examples=150, deadline=None)
@given(message=_responses, indeterminate=st.booleans(), step=st.integers(1, 40))
def test_stream_decoder_round_trip(message: Response, indeterminate: bool, step: int) -> None:
    decoder, content = _stream(message.encode(indeterminate=indeterminate), step)
    assert content == message.content
    assert (decoder.status, decoder.headers, decoder.trailers) == (
        message.status, message.headers, message.trailers)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200), step=st.integers(1, 30))
def test_stream_decoder_random_input_raises_only_medclave_errors(raw: bytes, step: int) -> None:
    with contextlib.suppress(MedclaveError):
        _stream(raw, step)
