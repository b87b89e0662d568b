"""The OTLP exporter (issue 16): off by default; enabled in the settings, the enclave and the
proxy send their spans over OTLP/HTTP to a real receiver on 127.0.0.1 that decodes each
``ExportTraceServiceRequest`` with ``opentelemetry-proto``. One request through the proxy makes
one trace, proxy -> enclave -> engine -> audit, as the collector sees it, and no attribute (nor
span name, nor the resource's attributes) carries the prompt, the answer, the user or the tenant."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from medclave.background import BackgroundServer
from medclave.client.proxy import ProxySettings, create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app as enclave_app
from medclave.enclave.boot import boot
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import InputError
from medclave.ops.config import load_settings
from medclave.ops.tracing import Tracing, traces_url
from tests.e2e.helpers import (
    FAKE_ANSWER,
    ISSUER,
    MEASUREMENT,
    TENANT,
    FakeEngine,
    make_idp,
    sim_policy,
    write_commitment_key,
)
from tests.ops.otlp_receiver import OtlpReceiver, ReceivedSpan

PROMPT = "Patient Zanzibar Quixote MRN-778899 reports chest pain"
PHI = ("Zanzibar", "Quixote", "MRN-778899", "chest pain", "dr-alice", TENANT, FAKE_ANSWER,
       "Zebra-quartz")
# The attribute keys a span may carry (written out here, not read from the code under test).
SPAN_ATTRIBUTES = {"http.request.method", "http.route", "http.response.status_code",
                   "medclave.service"}


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ReceivedSpan]]:
    folder = tmp_path_factory.mktemp("otlp")
    with OtlpReceiver() as receiver:
        idp = make_idp(folder)
        # Enabled through the settings, as an operator does: a collector's base URL (the
        # traces path is added) for the enclave, the full traces URL for the proxy.
        settings = EnclaveSettings(data_dir=folder / "enclave", platform="sim",
                                   sim_measurement=MEASUREMENT, audit_store="memory",
                                   commitment_key_file=write_commitment_key(folder / "t.key"),
                                   auth_issuer=ISSUER, auth_jwks_file=idp.jwks,
                                   auth_tenants=(TENANT,), tracing="otlp",
                                   otlp_endpoint=receiver.base_url)
        proxy_settings = ProxySettings(upstream="http://127.0.0.1:9", policy_file=folder / "p",
                                       tracing="otlp",
                                       otlp_endpoint=receiver.base_url + "/v1/traces")
        engine = FakeEngine()
        booted = boot(settings, engine_factory=lambda path, s: engine)
        enclave = enclave_app(booted.service, settings)
        proxy_tracing = Tracing.of("proxy", proxy_settings.tracing, proxy_settings.otlp_endpoint)
        try:
            with BackgroundServer(enclave) as enclave_server:
                assert booted.platform.sim_root is not None
                session = EnclaveSession(enclave_server.url, sim_policy(),
                                         sim_roots=frozenset({booted.platform.sim_root}))
                try:
                    with BackgroundServer(create_proxy_app(session, tracing=proxy_tracing)
                                          ) as proxy:
                        client = openai.OpenAI(base_url=proxy.url + "/v1", max_retries=0,
                                               api_key=idp.token(sub="dr-alice"))
                        answer = client.chat.completions.create(
                            model="smollm2-135m-instruct",
                            messages=[{"role": "user", "content": PROMPT}])
                        assert answer.choices[0].message.content == FAKE_ANSWER
                finally:
                    session.close()
        finally:
            # Shutdown flushes the batch processors (as a service's stop does).
            proxy_tracing.shutdown()
            enclave.state.ops.tracing.shutdown()
            booted.close()
        deadline = time.monotonic() + 10
        while not any(s.name == "audit log append" for s in receiver.received()):
            assert time.monotonic() < deadline, "no audit span reached the receiver"
            time.sleep(0.05)
        assert receiver.content_types == {"application/x-protobuf"}
        yield receiver.received()


def test_one_trace_reaches_the_collector_from_the_proxy_to_the_audit_log(
        received: list[ReceivedSpan]) -> None:
    by_id = {s.span_id: s for s in received}
    audit = [s for s in received if s.name == "audit log append"]
    assert len(audit) == 1
    chain = [audit[0]]
    while chain[-1].parent_span_id in by_id:
        chain.append(by_id[chain[-1].parent_span_id])
    names = [s.name for s in chain]
    # audit <- the enclave's POST /v1/ohttp <- the proxy's POST /v1/chat/completions (the root)
    assert names[0] == "audit log append"
    assert "POST /v1/ohttp" in names
    assert names[-1] == "POST /v1/chat/completions" and chain[-1].parent_span_id == ""
    assert chain[-1].service == "medclave-proxy"
    assert {"medclave-enclave", "medclave-proxy"} <= {s.service for s in chain}
    trace = chain[0].trace_id
    assert len(trace) == 32 and {s.trace_id for s in chain} == {trace}
    engine = [s for s in received if s.name == "engine generate"]
    assert engine and all(s.trace_id == trace for s in engine)
    assert engine[0].service == "medclave-enclave"


def test_no_span_carries_the_prompt_the_answer_or_an_identity(
        received: list[ReceivedSpan]) -> None:
    assert received
    for span in received:
        assert set(span.attributes) <= SPAN_ATTRIBUTES, span.attributes
        text = json.dumps(span.attributes) + span.name + json.dumps(span.resource)
        assert not any(p in text for p in PHI), span


def test_tracing_is_off_by_default_and_otlp_needs_an_endpoint(tmp_path: Path) -> None:
    assert EnclaveSettings().tracing == "off"
    assert not Tracing.of("enclave", EnclaveSettings().tracing).enabled
    config = tmp_path / "enclave.toml"
    config.write_text('tracing = "otlp"\n')
    with pytest.raises(InputError) as refused:
        load_settings(EnclaveSettings, config_file=config)
    assert refused.value.code == "config.invalid" and "otlp_endpoint" in str(refused.value)
    config.write_text('tracing = "otlp"\notlp_endpoint = "ftp://collector"\n')
    with pytest.raises(InputError):
        load_settings(EnclaveSettings, config_file=config)


@pytest.mark.parametrize(("given", "posted"), [
    ("http://collector:4318", "http://collector:4318/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/v1/traces"),
    ("https://otel.hospital.example/custom/traces", "https://otel.hospital.example/custom/traces"),
])
def test_a_base_endpoint_gets_the_traces_path(given: str, posted: str) -> None:
    assert traces_url(given) == posted
