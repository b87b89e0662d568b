"""The enclave's request handling, its doors and its boot, with a spy engine (no model)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from medclave.attestation.verifier import verify_bundle
from medclave.audit import verify_receipt
from medclave.client.session import EnclaveSession
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.enclave.boot import boot
from medclave.enclave.engines.base import ChatMessage, Delta, SamplingParams
from medclave.enclave.keys import KeyRing
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import AttestationError, CryptoError, EnclaveError, InputError
from medclave.protocol import inference as proto
from tests.e2e.helpers import (
    FAKE_ANSWER,
    MEASUREMENT,
    Enclave,
    FakeEngine,
    Idp,
    make_idp,
    now,
    sim_policy,
    start_enclave,
)

PROMPT = "Mrs Dalloway, DOB 1961-03-04, HbA1c 9.1%: adjust metformin?"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def spy() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def enclave(tmp_path: Path, idp: Idp, spy: FakeEngine) -> Iterator[Enclave]:
    e = start_enclave(tmp_path / "enclave", idp, engine=spy, audit_store="sqlite")
    yield e
    e.stop()


def _call(enclave: Enclave, body: dict[str, object] | bytes, *, token: str | None,
          path: str = proto.CHAT_PATH, method: str = "POST") -> bhttp.Response:
    """Encapsulate directly to the service (no HTTP), as a client would."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    inner = proto.encode_inner_request(method, path, body=raw,
                                       authorization=f"Bearer {token}" if token else None)
    service = enclave.booted.service
    wire, context = encapsulate_request(service.keys.config, inner)
    outer = service.handle(wire, proto.OHTTP_REQUEST)
    return bhttp.decode_response(context.decapsulate_response(outer.body))


def _code(response: bhttp.Response) -> str:
    return str(json.loads(response.content)["error"]["code"])


def test_attestation_binds_the_runtime_the_client_will_trust(enclave: Enclave) -> None:
    service = enclave.booted.service
    nonce = os.urandom(32)
    bundle = service.attest(nonce)
    verified = verify_bundle(bundle, now=now(), expected_nonce=nonce,
                             sim_roots=frozenset({enclave.sim_root}))
    assert verified.claims["measurement"] == MEASUREMENT
    runtime = proto.EnclaveRuntime.from_runtime(bundle.runtime)
    assert runtime.key_config() == service.keys.config
    assert runtime.engine == "fake" and runtime.engine_build == "fake-engine/1"
    assert runtime.policy_digest == service.authorization.policy_digest is not None
    assert runtime.audit_key() == service.identity.audit_public_key


def test_an_answer_carries_a_receipt_of_commitments_only(enclave: Enclave, idp: Idp) -> None:
    answer = _call(enclave, {"messages": [{"role": "user", "content": PROMPT}],
                             "temperature": 0, "seed": 9, "max_tokens": 20}, token=idp.token())
    assert answer.status == 200
    body = json.loads(answer.content)
    assert body["choices"][0]["message"]["content"] == FAKE_ANSWER
    rid = answer.header(proto.REQUEST_ID_HEADER)
    assert body["id"] == f"chatcmpl-{rid}"
    receipt = proto.decode_receipt_header(answer.header(proto.RECEIPT_HEADER) or "")
    runtime = proto.EnclaveRuntime.from_runtime(enclave.booted.service.runtime())
    from medclave.audit.note import ALG_ED25519, NoteVerifier

    verified = verify_receipt(receipt, NoteVerifier(runtime.audit_origin, runtime.audit_key(),
                                                    ALG_ED25519))
    entry = verified.entry
    assert entry.request_id == rid and entry.tenant == "st-marys"
    assert entry.params.seed == 9 and entry.params.max_tokens == 20
    assert entry.authorization.reason == "model-infer-by-role"
    assert "dr-alice" not in receipt.decode() and PROMPT.encode() not in receipt
    assert FAKE_ANSWER.encode() not in receipt


def test_no_prompt_or_answer_reaches_logs_or_disk(enclave: Enclave, idp: Idp,
                                                  caplog: pytest.LogCaptureFixture,
                                                  tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    assert _call(enclave, {"messages": [{"role": "user", "content": PROMPT}]},
                 token=idp.token()).status == 200
    assert _call(enclave, {"messages": [{"role": "user", "content": PROMPT}],
                           "tools": [{"type": "function"}]}, token=idp.token()).status == 400
    assert "request " in caplog.text and "status=200" in caplog.text
    for secret in (PROMPT, "Dalloway", FAKE_ANSWER):
        assert secret not in caplog.text
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert written  # the audit log is there...
    for secret in (PROMPT.encode(), b"Dalloway", FAKE_ANSWER.encode(), b"dr-alice"):
        assert secret not in written  # ...holding commitments only


@pytest.mark.parametrize(("body", "path", "method", "code"), [
    ({"messages": [{"role": "user", "content": "x"}], "stream": True}, proto.CHAT_PATH, "POST",
     "enclave.bad_request"),
    ({"messages": []}, proto.CHAT_PATH, "POST", "enclave.bad_request"),
    ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4o"}, proto.CHAT_PATH,
     "POST", "model_not_found"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, proto.CHAT_PATH,
     "POST", "enclave.bad_request"),
    ({"prompt": ["a", "b"]}, proto.COMPLETIONS_PATH, "POST", "enclave.bad_request"),
    (b"{not json", proto.CHAT_PATH, "POST", "input.malformed"),
    ({}, "/v1/embeddings", "POST", "enclave.no_route"),
    ({}, proto.CHAT_PATH, "GET", "enclave.method_not_allowed"),
])
def test_bad_requests_are_answered_inside_the_encapsulation(
        enclave: Enclave, idp: Idp, spy: FakeEngine, body: dict[str, object] | bytes, path: str,
        method: str, code: str) -> None:
    answer = _call(enclave, body, token=idp.token(), path=path, method=method)
    assert answer.status in (400, 404, 405, 413) and _code(answer) == code
    assert spy.calls == []


def test_the_door_stops_a_caller_before_the_engine(enclave: Enclave, spy: FakeEngine,
                                                   idp: Idp) -> None:
    for token, status, code in ((None, 401, "auth.token_missing"),
                                (idp.token(roles=("patient",)), 403, "auth.forbidden")):
        answer = _call(enclave, {"messages": [{"role": "user", "content": PROMPT}]},
                       token=token)
        assert (answer.status, _code(answer)) == (status, code)
    assert spy.calls == []
    assert _call(enclave, {"messages": [{"role": "user", "content": PROMPT}]},
                 token=idp.token()).status == 200
    assert spy.calls == ["chat"]


class _Failing(FakeEngine):
    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        yield Delta("partial")
        raise EnclaveError("enclave.engine_failed", "out of memory")


def test_an_engine_failure_mid_stream_is_reported_not_hidden(tmp_path: Path) -> None:
    enclave = start_enclave(tmp_path, None, engine=_Failing())
    try:
        with EnclaveSession(enclave.url, sim_policy(),
                            sim_roots=frozenset({enclave.sim_root})) as session:
            stream = session.stream("POST", proto.CHAT_PATH, body=json.dumps(
                {"messages": [{"role": "user", "content": "x"}], "stream": True}).encode())
            text = b"".join(stream.iter_content())
        assert b"partial" in text and b"enclave.engine_failed" in text
        assert b"out of memory" not in text  # the public message only
        assert stream.receipt is None
    finally:
        enclave.stop()


def test_outer_errors_say_only_what_the_operator_already_knows(enclave: Enclave) -> None:
    url = enclave.url
    cases = [
        (httpx.post(f"{url}/v1/ohttp", content=b"\x01" * 80,
                    headers={"content-type": proto.OHTTP_REQUEST}), 400),
        (httpx.post(f"{url}/v1/ohttp", content=b"{}",
                    headers={"content-type": "application/json"}), 400),
        (httpx.post(f"{url}/v1/ohttp", content=b"\x00" * (3 * 1024 * 1024),
                    headers={"content-type": proto.OHTTP_REQUEST}), 413),
        (httpx.get(f"{url}/v1/attestation", params={"nonce": "zz"}), 400),
        (httpx.get(f"{url}/v1/attestation", params={"nonce": "ab" * 8 + "A"}), 400),
        (httpx.get(f"{url}/v1/attestation"), 400),
        (httpx.get(f"{url}/admin"), 404),
    ]
    for response, status in cases:
        assert response.status_code == status
        assert set(response.json()["error"]) == {"code", "message"}


def test_key_ring_rotates_on_schedule_and_keeps_a_grace_period() -> None:
    moments = [now()]
    ring = KeyRing(lambda: moments[-1], rotation=timedelta(hours=1),
                   grace=timedelta(minutes=5))
    first = ring.current
    moments.append(moments[0] + timedelta(minutes=59))
    assert ring.current is first
    moments.append(moments[0] + timedelta(hours=1))
    second = ring.current
    assert second.key_id == (first.key_id + 1) % 256 and second is not first
    assert [k.key_id for k in ring.usable()] == [second.key_id, first.key_id]
    moments.append(moments[-1] + timedelta(minutes=6))
    assert ring.usable() == [second]
    wire, _ = encapsulate_request(first.config, b"late")
    from medclave.crypto.ohttp import decapsulate_request

    with pytest.raises(CryptoError) as caught:
        decapsulate_request(ring.usable(), wire)
    assert caught.value.code == "crypto.key_unknown"


def test_boot_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(AttestationError) as no_tee:
        boot(EnclaveSettings(data_dir=tmp_path, platform="auto", insecure_no_auth=True),
             engine_factory=lambda p, s: FakeEngine())
    assert no_tee.value.code == "attestation.unknown_platform"
    with pytest.raises(InputError) as no_auth:
        boot(EnclaveSettings(data_dir=tmp_path, platform="sim", audit_store="memory"),
             engine_factory=lambda p, s: FakeEngine())
    assert no_auth.value.code == "config.invalid"
