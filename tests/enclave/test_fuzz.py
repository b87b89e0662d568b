"""Untrusted bytes at the enclave's door: whatever arrives, the answer is a refusal with a
catalogue code (outside, or encapsulated inside), never a crash, and never the engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestEncoder
from medclave.errors import CATALOGUE, MedclaveError
from medclave.protocol import inference as proto
from tests.e2e.helpers import Enclave, FakeEngine, make_idp, start_enclave

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPY = FakeEngine()


@pytest.fixture(scope="module")
def enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    e = start_enclave(folder / "enclave", make_idp(folder), engine=SPY)
    yield e
    e.stop()


@FUZZ
@given(data=st.binary(max_size=600),
       media=st.sampled_from([proto.OHTTP_REQUEST, proto.CHUNKED_REQUEST, "text/plain"]))
def test_random_outer_bytes_are_refused_outside(enclave: Enclave, data: bytes, media: str
                                                ) -> None:
    # Nothing random decapsulates (HPKE/AEAD), so every input is refused before the door: as
    # the sender's fault (4xx, a crypto/protocol/input code), never as an internal error.
    with pytest.raises(MedclaveError) as info:
        outer = enclave.booted.service.handle(data, media)
        if outer.stream is not None:
            b"".join(outer.stream)
    error = info.value
    if media == "text/plain":
        assert error.code == "input.unrecognized"
    else:
        assert error.code.split(".")[0] in {"crypto", "protocol", "input"}, error.code
    assert 400 <= error.status < 500
    assert SPY.calls == []


@FUZZ
@given(inner=st.binary(max_size=600), chunked=st.booleans())
def test_random_inner_bytes_get_an_encapsulated_refusal(enclave: Enclave, inner: bytes,
                                                        chunked: bool) -> None:
    service = enclave.booted.service
    if chunked:
        encoder = ChunkedRequestEncoder(service.keys.config)
        outer = service.handle(encoder.final(inner), proto.CHUNKED_REQUEST)
        assert outer.stream is not None
        decoder = encoder.response_decoder()
        plain = b"".join(p for piece in outer.stream for p in decoder.feed(piece))
        plain += b"".join(decoder.close())
    else:
        wire, context = encapsulate_request(service.keys.config, inner)
        plain = context.decapsulate_response(service.handle(wire, proto.OHTTP_REQUEST).body)
    answer = bhttp.decode_response(plain)
    assert answer.status in (400, 401, 413)
    assert json.loads(answer.content)["error"]["code"] in CATALOGUE
    assert SPY.calls == []


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4), max_leaves=12)))
def test_random_api_bodies_without_a_token_never_reach_the_engine(enclave: Enclave,
                                                                  body: object) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    service = enclave.booted.service
    inner = proto.encode_inner_request("POST", proto.CHAT_PATH, body=raw)
    wire, context = encapsulate_request(service.keys.config, inner)
    answer = bhttp.decode_response(context.decapsulate_response(
        service.handle(wire, proto.OHTTP_REQUEST).body))
    assert answer.status == 401
    assert SPY.calls == []
