"""The scribe over real HTTP on 127.0.0.1: the official ``openai`` client and plain multipart
through the proxy, encapsulated (chunked OHTTP) to a sim enclave; receipts, audit entries that
commit to the audio, note and codes, policies on the attested speech runtime, and refusals."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import openai
import pytest
from fhir.resources.R4B.documentreference import DocumentReference

from medclave.attestation.policy import AppraisalPolicy
from medclave.audit import parse_entry
from medclave.audit.entry import open_commitment, pseudonym
from medclave.client.session import EnclaveSession
from medclave.client.verify import verify_enclave
from medclave.crypto.canonical import canonical_json
from medclave.enclave.audio import AudioLimits
from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.speech import SPEECH_MODEL_SHA256, Transcriber
from medclave.errors import MedclaveError
from medclave.protocol import inference as proto
from tests.e2e.helpers import MEASUREMENT, sim_policy
from tests.scribe.conftest import Stack, start_stack
from tests.scribe.visits import by_name


def entries(stack: Stack) -> list:  # type: ignore[type-arg]
    sink = stack.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    log = sink.audit_log
    return [parse_entry(log.entry(i)) for i in range(log.size)]


def test_openai_transcriptions_through_the_proxy(stack: Stack, spoken: dict[str, bytes],
                                                 transcriber: Transcriber) -> None:
    audio = spoken["asthma"]
    client = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key="unused", max_retries=0)
    before = len(entries(stack))
    result = client.audio.transcriptions.create(file=("visit.wav", audio, "audio/wav"),
                                                model="whisper-1")
    # The same text as the worker gives run on its own (which is faster-whisper's own text:
    # tests/scribe/test_speech.py).
    assert result.text == transcriber.transcribe(audio).text
    assert "asthma" in result.text.lower()
    verbose = client.audio.transcriptions.create(file=("visit.wav", audio), model="whisper-1",
                                                 response_format="verbose_json")
    assert verbose.text == result.text and verbose.segments
    text = client.audio.transcriptions.create(file=("visit.wav", audio), model="whisper-1",
                                              response_format="text")
    assert str(text).strip() == result.text
    # One entry per request, committing to the audio's digest and the text, holding neither.
    new = entries(stack)[before:]
    assert [e.action for e in new] == ["transcribe"] * 3
    key = stack.tenant_key()
    digest = hashlib.sha256(audio).hexdigest()
    open_commitment(key, "prompt", new[0].salt, f"audio-sha256:{digest}".encode(), new[0].prompt)
    open_commitment(key, "answer", new[0].salt, result.text.encode(), new[0].answer)
    assert "asthma" not in json.dumps([e.model_dump() for e in new]).lower()


def test_scribe_through_the_proxy(stack: Stack, spoken: dict[str, bytes]) -> None:
    audio = spoken["asthma"]
    before = len(entries(stack))
    response = httpx.post(f"{stack.proxy_url}{proto.SCRIBE_PATH}", timeout=300,
                          files={"file": ("visit.wav", audio, "audio/wav")},
                          data={"patient": "pat-42",
                                "context": json.dumps({"reason": "asthma review",
                                                       "encounter": "enc-9"})})
    assert response.status_code == 200, response.text
    assert response.headers[proto.REQUEST_ID_HEADER]  # the receipt was verified by the proxy
    body = response.json()
    assert body["object"] == "medclave.scribe"
    assert body["audio"] == {"sha256": hashlib.sha256(audio).hexdigest(),
                             "duration": pytest.approx(body["audio"]["duration"]),
                             "retained": False}
    transcript = body["transcript"]
    assert transcript["speakers_known"]
    speakers = [t["speaker"] for t in transcript["turns"]]
    assert speakers[0] == "clinician" and "patient" in speakers
    text = transcript["text"]
    for sentence in transcript["sentences"]:
        assert text[sentence["start"]:sentence["end"]].strip()
    sections = body["note"]["sections"]
    assessment = " ".join(s["text"] for s in sections["assessment"]).lower()
    assert "asthma" in assessment
    for section in sections.values():
        for statement in section:
            source = text[statement["start"]:statement["end"]]
            assert source and statement["drafted_by"] in ("model", "transcript")
            if statement["drafted_by"] == "transcript":
                assert statement["text"] == source
    codes = body["codes"]
    assert {c["code"] for c in codes[:3]} & set(by_name("asthma").codes)
    for code in codes:
        assert code["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
        assert code["status"] == "suggested"
        assert "asthma" in text[code["start"]:code["end"]].lower()
    resource = DocumentReference.model_validate(body["fhir"])
    assert resource.subject.reference == "Patient/pat-42"
    assert resource.context.encounter[0].reference == "Encounter/enc-9"
    assert base64.b64decode(body["fhir"]["content"][0]["attachment"]["data"]).decode() == \
        body["note"]["text"]
    # The entry commits to the audio digest, the note and the codes; the patient is a pseudonym.
    (entry,) = entries(stack)[before:]
    key = stack.tenant_key()
    assert entry.action == "scribe"
    assert entry.patient == pseudonym(key, "patient", "Patient/pat-42")
    open_commitment(key, "prompt", entry.salt,
                    f"audio-sha256:{hashlib.sha256(audio).hexdigest()}".encode(), entry.prompt)
    open_commitment(key, "answer", entry.salt, body["note"]["text"].encode(), entry.answer)
    open_commitment(key, "document", entry.salt, canonical_json(codes), entry.documents[0])
    open_commitment(key, "document", entry.salt, canonical_json(body["fhir"]),
                    entry.documents[1])
    with pytest.raises(MedclaveError):
        open_commitment(key, "answer", entry.salt, b"another note", entry.answer)


def test_a_typed_transcript_needs_no_audio(stack: Stack) -> None:
    visit = by_name("diabetes")
    response = httpx.post(f"{stack.proxy_url}{proto.SCRIBE_PATH}", timeout=120,
                          json={"transcript": visit.typed, "patient": "Patient/p-7"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["audio"] is None and body["speech_model"] is None
    assert "diabetes" in " ".join(s["text"] for s in body["note"]["sections"]["assessment"])
    assert "E11.9" in {c["code"] for c in body["codes"][:3]}


def test_refusals_come_back_inside_the_encapsulation(stack: Stack, transcriber: Transcriber,
                                                     spoken: dict[str, bytes]) -> None:
    client = openai.OpenAI(base_url=f"{stack.proxy_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(file=("x.wav", b"RIFF\x00\x00\x00\x00WAVEjunk"),
                                           model="whisper-1")
    assert bad.value.code == "input.audio_unreadable"
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(file=("x.wav", spoken["asthma"]), model="whisper-1",
                                           response_format="srt")
    assert bad.value.code == "enclave.bad_request"
    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.transcriptions.create(file=("x.wav", spoken["asthma"]), model="tts-9")
    assert missing.value.code == "model_not_found"
    limits = transcriber.limits
    transcriber.limits = AudioLimits(max_bytes=limits.max_bytes, max_seconds=5.0)
    try:
        with pytest.raises(openai.APIStatusError) as long:
            client.audio.transcriptions.create(file=("x.wav", spoken["asthma"]),
                                               model="whisper-1")
        assert long.value.status_code == 413 and long.value.code == "input.audio_too_long"
        transcriber.limits = AudioLimits(max_bytes=1024, max_seconds=limits.max_seconds)
        response = httpx.post(f"{stack.proxy_url}{proto.SCRIBE_PATH}", timeout=60,
                              files={"file": ("visit.wav", spoken["asthma"])})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "input.audio_too_large"
    finally:
        transcriber.limits = limits
    response = httpx.post(f"{stack.proxy_url}{proto.SCRIBE_PATH}", timeout=60, json={})
    assert response.status_code == 400 and response.json()["error"]["code"] == "input.missing"
    response = httpx.post(f"{stack.proxy_url}{proto.SCRIBE_PATH}", timeout=60,
                          json={"transcript": "Doctor: Hello.", "patient": "../../etc"})
    assert response.json()["error"]["code"] == "input.malformed"


def test_the_runtime_states_retention_and_sandbox(stack: Stack,
                                                  transcriber: Transcriber) -> None:
    runtime = stack.booted.service.runtime()
    assert runtime["audio_retention"] == "none"
    assert runtime["speech_model_digest"] == SPEECH_MODEL_SHA256
    assert runtime["speech_sandbox"] == ("landlock" if transcriber.sandbox.active else "none")
    status = httpx.get(f"{stack.proxy_url}/app/scribe/status", timeout=60).json()
    assert status["enclave"]["speech"]["audio_retention"] == "none"
    assert status["enclave"]["secure"] is False  # sim: the page shows its red banner


def _policy(**speech: object) -> AppraisalPolicy:
    base = sim_policy().model_dump(mode="json")
    base.update(speech)
    return AppraisalPolicy.model_validate(base)


def test_a_policy_can_require_the_speech_runtime(stack: Stack, transcriber: Transcriber,
                                                 tmp_path: Path) -> None:
    root = stack.booted.platform.sim_root
    assert root is not None
    sandbox = "landlock" if transcriber.sandbox.active else None
    strict = _policy(audio_retention="none", speech_sandbox=sandbox,
                     speech_model_digests=[SPEECH_MODEL_SHA256])
    with EnclaveSession(stack.enclave.url, strict, sim_roots=frozenset({root})) as session:
        assert session.attest().runtime.audio_retention == "none"
    wrong_model = _policy(audio_retention="none", speech_model_digests=["0" * 64])
    with EnclaveSession(stack.enclave.url, wrong_model, sim_roots=frozenset({root})) as session:
        with pytest.raises(MedclaveError) as caught:
            session.attest()
        assert caught.value.code == "policy.speech_not_allowed"
    # An enclave that takes no audio states no retention: the same strict policy refuses it,
    # and the proxy sends no audio to it even under a policy that says nothing of speech.
    plain = start_stack(tmp_path, None, scribe=False)
    try:
        plain_root = plain.booted.platform.sim_root
        assert plain_root is not None
        with EnclaveSession(plain.enclave.url, _policy(audio_retention="none"),
                            sim_roots=frozenset({plain_root})) as session:
            with pytest.raises(MedclaveError) as caught:
                session.attest()
            assert caught.value.code == "policy.speech_not_allowed"
        before = len(entries(plain))
        response = httpx.post(f"{plain.proxy_url}{proto.TRANSCRIPTIONS_PATH}", timeout=60,
                              files={"file": ("x.wav", b"RIFF....WAVE")},
                              data={"model": "whisper-1"})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "client.attestation_refused"
        assert len(entries(plain)) == before  # nothing reached the enclave's door
    finally:
        plain.stop()


def test_the_speech_runtime_is_bound_into_the_evidence(stack: Stack) -> None:
    # The operator cannot make an enclave claim a retention or sandbox it does not have: the
    # runtime is bound into report_data, so an edited claim fails verification.
    root = stack.booted.platform.sim_root
    assert root is not None
    nonce = bytes(range(32))
    raw = httpx.get(f"{stack.enclave.url}{proto.ATTESTATION_PATH}",
                    params={"nonce": nonce.hex()}, timeout=60).content
    from datetime import UTC, datetime

    verified = verify_enclave(raw, nonce=nonce, policy=sim_policy(), now=datetime.now(UTC),
                              sim_roots=frozenset({root}))
    assert verified.runtime.audio_retention == "none"
    for field, value in (("audio_retention", "30-days"), ("speech_sandbox", "landlock"),
                         ("speech_model_digest", "1" * 64)):
        bundle = json.loads(raw)
        if bundle["runtime"].get(field) == value:
            value = "none"
        bundle["runtime"][field] = value
        with pytest.raises(MedclaveError) as caught:
            verify_enclave(json.dumps(bundle).encode(), nonce=nonce, policy=sim_policy(),
                           now=datetime.now(UTC), sim_roots=frozenset({root}))
        assert caught.value.code.startswith("attestation.")
    assert MEASUREMENT  # the policy pinned the sim measurement
