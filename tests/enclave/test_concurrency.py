"""Issue 9 §6: inference has bounded capacity of its own, apart from attestation.

The attack: 45 concurrent long inferences made the unauthenticated attestation endpoint take
3 s (2 ms idle), both running in the one shared thread pool (40 threads). Here a paced engine
holds inferences in progress until the test lets them go, so every check is made while the
slots are known (by counters) to be full, on a real uvicorn server.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from medclave.background import BackgroundServer
from medclave.client import MedclaveClient
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession, InnerResponse
from medclave.enclave.model import DEFAULT_MODEL_ID
from medclave.errors import CATALOGUE, EnclaveError
from medclave.protocol import inference as proto
from tests.e2e.helpers import (
    TENANT,
    Enclave,
    Idp,
    SlowEngine,
    make_idp,
    sim_policy,
    start_enclave,
    wait_for_entry,
)

OTHER = "st-judes"
MESSAGES = [{"role": "user", "content": "Summarise the discharge letter."}]
CHAT = json.dumps({"messages": MESSAGES, "max_tokens": 16}).encode()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    return make_idp(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def engine() -> Iterator[SlowEngine]:
    engine = SlowEngine(words=20)
    yield engine
    engine.opened.set()  # whatever a failing test left inside the engine comes out
    engine.release(100)


def _enclave(tmp_path: Path, idp: Idp, engine: SlowEngine, **limits: int) -> Enclave:
    return start_enclave(tmp_path / "enclave", idp, engine=engine,
                         auth_tenants=(TENANT, OTHER), **limits)


def _session(enclave: Enclave) -> EnclaveSession:
    return EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))


def _chat(session: EnclaveSession, idp: Idp, tenant: str = TENANT) -> Callable[[], InnerResponse]:
    token = idp.token(tenant=tenant)
    return lambda: session.request("POST", proto.CHAT_PATH, body=CHAT,
                                   authorization=f"Bearer {token}")


def _attest(enclave: Enclave) -> httpx.Response:
    return httpx.get(f"{enclave.url}{proto.ATTESTATION_PATH}",
                     params={"nonce": secrets.token_hex(32)}, timeout=60)


def test_attestation_does_not_queue_behind_inference(tmp_path: Path, idp: Idp,
                                                     engine: SlowEngine) -> None:
    # As many inferences in progress as the shared thread pool had threads: before, attestation
    # then waited (here: until the engine was opened, which only happens after it returned).
    slots = 40
    enclave = _enclave(tmp_path, idp, engine, max_concurrent_inferences=slots,
                       max_concurrent_per_tenant=slots)
    session = _session(enclave)
    session.attest()
    pool = ThreadPoolExecutor(max_workers=slots)
    try:
        answers = [pool.submit(_chat(session, idp)) for _ in range(slots)]
        assert engine.wait_busy(slots)
        evidence = _attest(enclave)
        assert evidence.status_code == 200
        assert evidence.headers["content-type"].startswith(proto.EVIDENCE_MEDIA_TYPE)
        assert engine.busy == slots  # every inference was still in progress meanwhile
        # One more is refused at once, before anything is decapsulated (so: any body).
        refused = httpx.post(f"{enclave.url}{proto.OHTTP_PATH}", content=b"\x00" * 64,
                             headers={"content-type": proto.OHTTP_REQUEST}, timeout=60)
        assert refused.status_code == 429 == CATALOGUE["enclave.busy"].status
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "enclave.busy"
        assert engine.busy == slots
        engine.opened.set()
        assert [a.result(timeout=120).status for a in answers] == [200] * slots
        # The slots are free again.
        assert _chat(session, idp)().status == 200
    finally:
        engine.opened.set()
        pool.shutdown(wait=True)
        session.close()
        enclave.stop()


def test_one_tenant_cannot_take_every_slot(tmp_path: Path, idp: Idp, engine: SlowEngine) -> None:
    enclave = _enclave(tmp_path, idp, engine, max_concurrent_inferences=8,
                       max_concurrent_per_tenant=2, busy_retry_after_seconds=3)
    session = _session(enclave)
    pool = ThreadPoolExecutor(max_workers=4)
    proxy = BackgroundServer(create_proxy_app(session), name="test-proxy").start()
    try:
        held: list[Future[InnerResponse]] = [pool.submit(_chat(session, idp)) for _ in range(2)]
        assert engine.wait_busy(2)
        # The tenant's third is answered inside the encapsulation: only there is it known.
        third = _chat(session, idp)()
        assert (third.status, third.header("retry-after")) == (429, "3")
        error = json.loads(third.body)["error"]
        assert (error["code"], error["type"]) == ("enclave.busy", "rate_limit_error")
        # The same through the proxy, for the official client: a RateLimitError it can retry.
        app = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=idp.token(), max_retries=0)
        with pytest.raises(openai.RateLimitError) as limited:
            app.chat.completions.create(model=DEFAULT_MODEL_ID, messages=MESSAGES)  # type: ignore[arg-type]
        assert limited.value.response.headers["retry-after"] == "3"
        assert limited.value.code == "enclave.busy"
        # Another tenant is still served.
        other = pool.submit(_chat(session, idp, tenant=OTHER))
        assert engine.wait_busy(3)
        assert not other.done()
        engine.opened.set()
        assert other.result(timeout=120).status == 200
        assert [h.result(timeout=120).status for h in held] == [200, 200]
        assert engine.calls.count("chat") == 3  # the refused ones never reached the engine
    finally:
        engine.opened.set()
        proxy.stop()
        pool.shutdown(wait=True)
        session.close()
        enclave.stop()


def test_a_stream_holds_its_slots_until_its_client_leaves(tmp_path: Path, idp: Idp,
                                                          engine: SlowEngine) -> None:
    engine.opened.set()  # whole answers come back at once; streams are paced
    enclave = _enclave(tmp_path, idp, engine, max_concurrent_inferences=1,
                       max_concurrent_per_tenant=1)
    with MedclaveClient(enclave.url, policy=sim_policy(), api_key=idp.token,
                        sim_roots=[enclave.sim_root]) as client:
        try:
            engine.release(1)
            chunks = client.chat.completions.create(messages=MESSAGES, stream=True)
            assert [c.choices[0].delta.content for c in (next(chunks), next(chunks))] == ["",
                                                                                          "w0"]
            with pytest.raises(EnclaveError) as busy:
                client.chat.completions.create(messages=MESSAGES)
            assert busy.value.code == "enclave.busy"
            chunks.close()
            assert wait_for_entry(enclave, 0).ended == "client_gone"
            # The stream's slots come back once its client has gone (bounded wait; before the
            # answer was recorded on disconnect, they never did while the engine waited).
            deadline = time.monotonic() + 60
            while True:
                try:
                    answer = client.chat.completions.create(messages=MESSAGES)
                    break
                except EnclaveError as exc:
                    assert exc.code == "enclave.busy" and time.monotonic() < deadline
                    time.sleep(0.02)
            assert answer.choices[0].message.content == engine.answer
        finally:
            enclave.stop()
