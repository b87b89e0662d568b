"""The product's main job, end to end on real servers: the official openai client -> proxy ->
(operator's relay) -> enclave -> llama.cpp and back, plain and streamed."""

from __future__ import annotations

import httpx
import openai
import pytest

from medclave.client import MedclaveClient
from medclave.enclave.model import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHA256
from tests.e2e.helpers import MEASUREMENT, Enclave, Idp, Relay, sim_policy

PROMPT = "In one short sentence, what does an elevated troponin level suggest?"
MESSAGES = [{"role": "user", "content": PROMPT}]


def _app(proxy: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy}/v1", api_key=token, max_retries=0)


def test_openai_client_plain_and_streamed_only_ciphertext_on_the_wire(
        proxy: str, relay: Relay, idp: Idp) -> None:
    plain_token, stream_token = idp.token(), idp.token()
    answer = _app(proxy, plain_token).chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0, seed=11)
    text = answer.choices[0].message.content or ""
    assert text.strip()
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 12

    chunks = list(_app(proxy, stream_token).chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0, seed=11,
        stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # Greedy decoding with the same seed: streaming changes the transport, not the answer.
    assert streamed == text

    media = {dict(e.request_headers).get("content-type") for e in relay.posts()}
    assert media == {"message/ohttp-req", "message/ohttp-chunked-req"}
    recording = relay.recording()
    for secret in (PROMPT, "troponin", text.strip(), plain_token, stream_token, "Bearer"):
        assert secret.encode() not in recording, secret
    for word in {w for w in text.split() if len(w) >= 7}:
        assert word.encode() not in recording, word


def test_proxy_status_shows_the_last_verified_evidence(proxy: str, idp: Idp) -> None:
    assert httpx.get(f"{proxy}/medclave/status").json() == {
        "upstream_verified": False, "enclave": {}, "trust": {"state": "unverified"}}
    models = _app(proxy, idp.token()).models.list()
    assert [m.id for m in models.data] == [DEFAULT_MODEL_ID]
    status = httpx.get(f"{proxy}/medclave/status").json()
    enclave = status["enclave"]
    assert status["upstream_verified"] is True
    assert enclave["platform"] == "sim" and enclave["secure"] is False
    assert "NOT a real TEE" in enclave["warning"]
    assert enclave["measurement"] == MEASUREMENT
    assert enclave["model_digest"] == DEFAULT_MODEL_SHA256
    assert enclave["engine_build"].startswith("llama-cpp-python/0.3.36@sysinfo-")
    assert enclave["verified_at"]
    assert status["trust"] == {"state": "verified", "verified_at": enclave["verified_at"]}


def test_text_completion_through_the_proxy(proxy: str, idp: Idp) -> None:
    done = _app(proxy, idp.token()).completions.create(
        model=DEFAULT_MODEL_ID, prompt="The heart has four", max_tokens=8, temperature=0, seed=1)
    assert done.choices[0].text.strip()


def test_refusal_reaches_the_app_as_an_openai_error(proxy: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        _app(proxy, "not-a-token").chat.completions.create(
            model=DEFAULT_MODEL_ID, messages=MESSAGES, max_tokens=8)
    assert caught.value.code == "auth.token_malformed"


def test_temperature_zero_with_a_seed_gives_the_same_answer_twice(
        llama_enclave: Enclave, idp: Idp) -> None:
    answers = []
    for _ in range(2):
        with MedclaveClient(llama_enclave.url, policy=sim_policy(), api_key=idp.token(),
                            sim_roots=[llama_enclave.sim_root]) as client:
            done = client.chat.completions.create(
                model=DEFAULT_MODEL_ID, messages=MESSAGES, max_tokens=16, temperature=0,
                seed=1234)
            answers.append(done.choices[0].message.content)
            assert client.last_receipt is not None
            assert client.last_receipt.entry.params.seed == 1234
    assert answers[0] == answers[1] and answers[0]


def test_a_policy_refusal_reaches_the_app_before_its_question_leaves(
        relay: Relay, llama_enclave: Enclave, idp: Idp) -> None:
    from medclave.background import BackgroundServer
    from medclave.client.proxy import create_proxy_app
    from medclave.client.session import EnclaveSession

    session = EnclaveSession(relay.url, sim_policy(measurement="11" * 48),
                             sim_roots=frozenset({llama_enclave.sim_root}))
    with BackgroundServer(create_proxy_app(session)) as server, \
            pytest.raises(openai.APIStatusError) as caught:
        _app(server.url, idp.token()).chat.completions.create(
            model=DEFAULT_MODEL_ID, messages=MESSAGES, max_tokens=8)
    session.close()
    assert caught.value.status_code == 502
    assert caught.value.code == "attestation.measurement_mismatch"
    assert relay.posts() == [] and PROMPT.encode() not in relay.recording()
