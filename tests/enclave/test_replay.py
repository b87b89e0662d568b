"""Issue 10, item 1: replay protection is per encapsulated request, not per access token.

Through a real enclave on 127.0.0.1 (spy engine): one token serves 50 requests; the same
encapsulated bytes, sent twice by the operator's network, run once. And the strike register's
own rules: bounded per key (a full key retires), forgotten only when the key can open nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from medclave.crypto import bhttp
from medclave.crypto.ohttp import decapsulate_request, encapsulate_request
from medclave.crypto.ohttp_chunked import ChunkedRequestEncoder
from medclave.enclave.keys import KeyRing
from medclave.enclave.replay import ReplayGuard
from medclave.errors import CryptoError
from medclave.protocol import inference as proto
from tests.e2e.helpers import FakeEngine, Idp, make_idp, now, start_enclave

CHAT = json.dumps({"messages": [{"role": "user", "content": "K+ 6.1 mmol/L?"}],
                   "max_tokens": 4}).encode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def spy() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def enclave_url(tmp_path: Path, idp: Idp, spy: FakeEngine) -> Iterator[tuple[str, KeyRing]]:
    e = start_enclave(tmp_path / "enclave", idp, engine=spy)
    yield e.url, e.booted.service.keys
    e.stop()


def _post(url: str, wire: bytes, media: str = proto.OHTTP_REQUEST) -> httpx.Response:
    return httpx.post(f"{url}{proto.OHTTP_PATH}", content=wire, headers={"content-type": media},
                      timeout=30)


def test_one_token_serves_50_requests(enclave_url: tuple[str, KeyRing], idp: Idp,
                                      spy: FakeEngine) -> None:
    """Before: the second request with the same token was 401 auth.token_replayed."""
    url, keys = enclave_url
    token = idp.token()
    for i in range(50):
        path = proto.MODELS_PATH if i % 10 == 0 else proto.CHAT_PATH
        method = proto.INNER_PATHS[path]
        inner = proto.encode_inner_request(method, path, body=CHAT if method == "POST" else b"",
                                           authorization=f"Bearer {token}")
        wire, context = encapsulate_request(keys.config, inner)
        answer = _post(url, wire)
        assert answer.status_code == 200
        inner_answer = bhttp.decode_response(context.decapsulate_response(answer.content))
        assert inner_answer.status == 200, inner_answer.content
    assert spy.calls == ["chat"] * 45


def test_the_same_encapsulated_request_runs_once(enclave_url: tuple[str, KeyRing], idp: Idp,
                                                 spy: FakeEngine) -> None:
    """The operator sends captured bytes again: refused in the clear, the engine not reached."""
    url, keys = enclave_url
    inner = proto.encode_inner_request("POST", proto.CHAT_PATH, body=CHAT,
                                       authorization=f"Bearer {idp.token()}")
    wire, context = encapsulate_request(keys.config, inner)
    first = _post(url, wire)
    assert bhttp.decode_response(context.decapsulate_response(first.content)).status == 200
    again = _post(url, wire)
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "protocol.replayed"
    assert spy.calls == ["chat"]
    # A fresh encapsulation of the very same inner request (what a client's retry is) runs.
    fresh, context = encapsulate_request(keys.config, inner)
    assert bhttp.decode_response(context.decapsulate_response(_post(url, fresh).content)
                                 ).status == 200
    assert spy.calls == ["chat", "chat"]


def test_the_same_chunked_request_runs_once(enclave_url: tuple[str, KeyRing], idp: Idp,
                                            spy: FakeEngine) -> None:
    url, keys = enclave_url
    body = json.dumps({**json.loads(CHAT), "stream": True}).encode()
    inner = proto.encode_inner_request("POST", proto.CHAT_PATH, body=body,
                                       authorization=f"Bearer {idp.token()}")
    wire = ChunkedRequestEncoder(keys.config).final(inner)
    first = _post(url, wire, proto.CHUNKED_REQUEST)
    assert first.status_code == 200 and first.content
    again = _post(url, wire, proto.CHUNKED_REQUEST)
    assert again.status_code == 400
    assert again.json()["error"]["code"] == "protocol.replayed"
    assert spy.calls == ["chat_stream"]


def test_garbage_is_not_recorded(enclave_url: tuple[str, KeyRing]) -> None:
    """Only requests that decrypted enter the register: a forged one cannot fill it."""
    url, keys = enclave_url
    wire, _ = encapsulate_request(keys.config, b"x")
    forged = wire[:-1] + bytes([wire[-1] ^ 1])
    for _ in range(2):
        answer = _post(url, forged)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "crypto.decrypt_failed"


# --- the register's own rules (no HTTP) ---------------------------------------------------------


def test_a_full_register_retires_its_key_and_the_new_key_works() -> None:
    ring = KeyRing(now)
    guard = ReplayGuard(ring, per_key=3, total=10)
    first = ring.current
    for _ in range(3):
        wire, _ = encapsulate_request(first.config, b"q")
        guard.admit(wire, ring.usable())
    wire, _ = encapsulate_request(first.config, b"q")
    with pytest.raises(CryptoError) as full:
        guard.admit(wire, ring.usable())
    assert full.value.code == "crypto.key_unknown"
    second = ring.current
    assert second is not first  # rotated, so attesting again gives a key with room
    wire, _ = encapsulate_request(second.config, b"q")
    guard.admit(wire, ring.usable())
    # The full key's register is kept (its key is in its grace period): no replay slips by.
    assert len(guard) == 4


def test_the_total_bound_fails_closed() -> None:
    ring = KeyRing(now)
    guard = ReplayGuard(ring, per_key=2, total=3)
    for _ in range(2):
        guard.admit(encapsulate_request(ring.current.config, b"q")[0], ring.usable())
    with pytest.raises(CryptoError):
        guard.admit(encapsulate_request(ring.current.config, b"q")[0], ring.usable())
    guard.admit(encapsulate_request(ring.current.config, b"q")[0], ring.usable())  # new key
    with pytest.raises(CryptoError) as caught:  # 3 recorded: nothing more until keys retire
        guard.admit(encapsulate_request(ring.current.config, b"q")[0], ring.usable())
    assert caught.value.code == "crypto.key_unknown"
    assert len(guard) == 3


def test_a_register_is_forgotten_only_when_its_key_can_open_nothing() -> None:
    moments = [now()]
    ring = KeyRing(lambda: moments[-1], rotation=timedelta(hours=1), grace=timedelta(minutes=5))
    guard = ReplayGuard(ring)
    old = ring.current
    wire, _ = encapsulate_request(old.config, b"q")
    decapsulate_request(ring.usable(), wire)
    guard.admit(wire, ring.usable())
    moments.append(moments[0] + timedelta(hours=1, minutes=4))  # rotated, old key in grace
    assert [k.key_id for k in ring.usable()][1] == old.key_id
    with pytest.raises(CryptoError) as replayed:
        guard.admit(wire, ring.usable())
    assert replayed.value.code == "protocol.replayed"
    moments.append(moments[0] + timedelta(hours=1, minutes=10))  # the old key retired
    guard.admit(encapsulate_request(ring.current.config, b"q")[0], ring.usable())
    assert len(guard) == 1  # the old register is gone...
    with pytest.raises(CryptoError) as late:  # ...and a replay cannot even decrypt
        decapsulate_request(ring.usable(), wire)
    assert late.value.code == "crypto.key_unknown"
