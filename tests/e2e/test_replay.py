"""Replay closes the audit loop: a real llama.cpp inference through the enclave, then
``medclave audit replay`` from the log with the tenant's key reproduces its answer commitment
on the default replay engine (the bundled model, its digest checked, this build)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medclave.audit import parse_entry
from medclave.audit.note import ALG_ED25519, NoteVerifier
from medclave.audit.replay import replay
from medclave.cli.audit import app as audit_app
from medclave.crypto import bhttp
from medclave.crypto.ohttp import encapsulate_request
from medclave.enclave.engines import replay_engine
from medclave.enclave.engines.base import ResponseFormat, SamplingParams, Tool
from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.model import DEFAULT_MODEL_SHA256
from medclave.enclave.openai_api import commitment_input
from medclave.errors import AuditError
from medclave.protocol import inference as proto
from tests.e2e.helpers import Enclave, Idp, start_enclave

runner = CliRunner()
MESSAGES = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Which organ makes insulin?"}]
COMPLETION = "The normal adult resting heart rate is"


@pytest.fixture(scope="module")
def enclave(folder: Path, idp: Idp) -> Iterator[Enclave]:
    """The session's llama.cpp engine behind an enclave that keeps its log on disk (a file
    the replay command reads: SQLite even under MEDCLAVE_E2E_STORE=postgresql)."""
    e = start_enclave(folder / "replay-enclave", idp, audit_store="sqlite", store="sqlite")
    yield e
    e.stop()


def _infer(enclave: Enclave, idp: Idp, path: str, body: dict[str, Any]) -> int:
    """One inference, encapsulated to the service; the index of its entry."""
    inner = proto.encode_inner_request("POST", path, body=json.dumps(body).encode(),
                                       authorization=f"Bearer {idp.token()}")
    service = enclave.booted.service
    wire, context = encapsulate_request(service.keys.config, inner)
    answer = bhttp.decode_response(context.decapsulate_response(
        service.handle(wire, proto.OHTTP_REQUEST).body))
    assert answer.status == 200, answer.content
    receipt = json.loads(proto.decode_receipt_header(answer.header(proto.RECEIPT_HEADER) or ""))
    return int(receipt["index"])


def _replay(enclave: Enclave, tmp_path: Path, index: int, prompt: bytes) -> tuple[int, Any]:
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    [log_file] = (enclave.settings.data_dir / "audit").glob("*.sqlite3")
    # The auditor takes the log key from the attestation, never from the log.
    runtime = proto.EnclaveRuntime.from_runtime(enclave.booted.service.runtime())
    vkey = NoteVerifier(runtime.audit_origin, runtime.audit_key(), ALG_ED25519).vkey()
    prompt_file = tmp_path / "prompt.json"
    prompt_file.write_bytes(prompt)
    key_file = enclave.settings.commitment_key_file
    assert key_file is not None
    res = runner.invoke(audit_app, ["replay", str(index), "--prompt", str(prompt_file),
                                    "--tenant-key", str(key_file), "--key", vkey,
                                    "--log", str(log_file)])
    return res.exit_code, json.loads(res.stdout)


def test_a_real_inference_replays_from_the_log(enclave: Enclave, idp: Idp,
                                               tmp_path: Path) -> None:
    chat = _infer(enclave, idp, proto.CHAT_PATH, {
        "messages": MESSAGES, "temperature": 0, "seed": 11, "max_tokens": 8})
    completion = _infer(enclave, idp, proto.COMPLETIONS_PATH, {
        "prompt": COMPLETION, "temperature": 0, "seed": 12, "max_tokens": 8,
        "stop": ["\n\n"]})
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    engine = replay_engine()
    assert engine.model_digest == DEFAULT_MODEL_SHA256
    for index, prompt in ((chat, commitment_input(MESSAGES)),
                          (completion, commitment_input(COMPLETION,
                                                        SamplingParams(stop=("\n\n",))))):
        entry = parse_entry(sink.audit_log.entry(index))
        assert entry.engine_build == engine.engine_build  # the build the enclave recorded
        code, out = _replay(enclave, tmp_path, index, prompt)
        assert code == 0, out
        assert out["reproduced"] is True and out["answer_commitment"] == entry.answer

    # A changed prompt is refused before anything runs; so is the same text rendered otherwise.
    for changed in (commitment_input([*MESSAGES[:1], {"role": "user",
                                                       "content": "Which organ makes bile?"}]),
                    json.dumps(MESSAGES).encode()):
        code, out = _replay(enclave, tmp_path, chat, changed)
        assert (code, out["error"]["code"]) == (1, "audit.commitment_mismatch")


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CITY = {"type": "object", "properties": {"name": {"type": "string"},
                                         "population": {"type": "integer"}},
        "required": ["name", "population"]}
ASK = [{"role": "user", "content": "What's the weather in Paris? Describe Paris as JSON."}]


def _compact(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))


def test_a_tool_call_and_a_json_schema_answer_replay(enclave: Enclave, idp: Idp,
                                                     tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                             "parameters": WEATHER}}
    call = _infer(enclave, idp, proto.CHAT_PATH, {
        "messages": ASK, "tools": [tool], "temperature": 0.7, "seed": 5, "max_tokens": 24,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "presence_penalty": 0.5, "logprobs": True})
    structured = _infer(enclave, idp, proto.CHAT_PATH, {
        "messages": ASK, "temperature": 0.7, "seed": 6, "max_tokens": 40, "n": 2,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "city", "schema": CITY}}})
    called = SamplingParams(tools=(Tool("get_weather", "Weather", _compact(WEATHER)),),
                            tool_choice="required", tool_name="get_weather",
                            presence_penalty=0.5, logprobs=0)
    shaped = SamplingParams(n=2, response_format=ResponseFormat("json_schema", _compact(CITY),
                                                                "city"))
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    key = (enclave.settings.commitment_key_file or Path()).read_bytes().strip()
    answers = []
    for index, params in ((call, called), (structured, shaped)):
        prompt = commitment_input(ASK, params)
        code, out = _replay(enclave, tmp_path, index, prompt)
        assert (code, out["reproduced"]) == (0, True), out
        result = replay(parse_entry(sink.audit_log.entry(index)), prompt.decode(),
                        replay_engine(), key)
        answers.append(json.loads(result.answer))  # the committed form: choices and calls
    [[tool_call]] = [c["tool_calls"] for c in answers[0]["choices"]]
    assert tool_call["name"] == "get_weather" and "city" in json.loads(tool_call["arguments"])
    assert len(answers[1]["choices"]) == 2
    for choice in answers[1]["choices"]:
        assert json.loads(choice["content"]).keys() == {"name", "population"}

    # What shapes the answer is committed: another schema, or no penalty, is another prompt.
    for changed in (replace(called, presence_penalty=0.0),
                    replace(called, tools=(Tool("get_weather", "Weather",
                                                _compact({**WEATHER, "required": []})),))):
        code, out = _replay(enclave, tmp_path, call, commitment_input(ASK, changed))
        assert (code, out["error"]["code"]) == (1, "audit.commitment_mismatch")


def test_another_build_is_refused(enclave: Enclave, idp: Idp) -> None:
    index = _infer(enclave, idp, proto.CHAT_PATH, {
        "messages": MESSAGES, "temperature": 0, "seed": 11, "max_tokens": 8})
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    entry = parse_entry(sink.audit_log.entry(index))
    key_file = enclave.settings.commitment_key_file
    assert key_file is not None
    other = dataclasses.replace(replay_engine(),
                                engine_build="llama-cpp-python/0.0.1@sysinfo-0000000000000000")
    with pytest.raises(AuditError) as err:
        replay(entry, commitment_input(MESSAGES).decode(), other,
               key_file.read_bytes().strip())
    assert err.value.code == "audit.replay_engine_mismatch"
