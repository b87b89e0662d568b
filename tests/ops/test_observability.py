"""The four services, real HTTP on 127.0.0.1, driven through one flow (an OpenAI client through
the proxy to an enclave; a key release, granted and refused, at the broker; token requests at
the IdP), then: every service is healthy and ready, every metric scraped from every metrics port
has label values from the allow-lists only and no PHI, the request id sent to the proxy is in the
enclave's log line, every log line is one JSON object of one shape with no PHI, the broker's
refusals are logged at INFO, and the trace runs proxy -> enclave -> engine -> audit with no
prompt, answer or identity in any attribute (issue 16)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from medclave.attestation import sim
from medclave.auth.idp_server import build_service
from medclave.auth.idp_server import create_app as idp_app
from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app as enclave_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.settings import EnclaveSettings
from medclave.errors import CATALOGUE, MedclaveError
from medclave.kbs.app import create_app as kbs_app
from medclave.kbs.client import KbsClient
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.settings import KbsSettings
from medclave.ops.http import Operations
from medclave.ops.logs import configure_logging
from medclave.ops.metrics import MetricsServer
from medclave.ops.tracing import Tracing
from tests.e2e.helpers import (
    ISSUER,
    MEASUREMENT,
    TENANT,
    TurnEngine,
    make_idp,
    sim_policy,
    write_commitment_key,
)
from tests.kbs.helpers import OTHER_MEASUREMENT, RESOURCE, provision, sim_attester, trusting
from tests.kbs.helpers import sim_policy as release_policy
from tests.ops.helpers import samples

# What the flow sends that must never appear in a label, a log line or a span attribute.
PROMPT = "Patient Zanzibar Quixote MRN-778899 reports chest pain"
PHI = ("Zanzibar", "Quixote", "MRN-778899", "chest pain", "dr-alice", TENANT)
REQUEST_ID = "proxy-req-0123456789abcdef"

# The allow-lists, written out here (never read from the code under test).
SERVICES = {"enclave", "kbs", "idp", "proxy"}
METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
OUTCOMES = {"allowed", "refused"}
LABELS = {"service", "route", "method", "status", "code", "outcome", "le"}
ROUTES = {
    "enclave": {"/v1/attestation", "/v1/ohttp", "/healthz", "/readyz", "/openapi.json", "other"},
    "proxy": {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models",
              "/v1/models/{model_id:path}", "/medclave/status", "/healthz", "/readyz",
              "/openapi.json", "other"},
    "kbs": {"/kbs/v1/challenge", "/kbs/v1/release", "/kbs/v1/keys", "/kbs/v1/owner/resources",
            "/kbs/v1/owner/resources/{owner_name}/{rtype}/{name}",
            "/kbs/v1/owner/policies/{owner_name}/{rtype}/{name}", "/kbs/v1/owner/decisions",
            "/healthz", "/readyz", "/openapi.json", "other"},
    "idp": {"/.well-known/openid-configuration", "/jwks.json", "/token", "/healthz", "/readyz",
            "/openapi.json", "other"},
}
SPAN_ATTRIBUTES = {"http.request.method", "http.route", "http.response.status_code",
                   "medclave.service"}
LOG_KEYS = {"ts", "level", "service", "logger", "message", "request_id", "trace_id", "exc_type"}


@dataclass
class Stack:
    urls: dict[str, str]
    ops: dict[str, Operations]
    metrics: dict[str, MetricsServer]
    spans: InMemorySpanExporter
    logs: io.StringIO
    idp_token: str
    broker_url: str


def _ops(app: Any) -> Operations:
    ops = app.state.ops
    assert isinstance(ops, Operations)
    return ops


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("ops")
    logs = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("test", level="INFO", stream=logs)
    spans = InMemorySpanExporter()
    servers: list[BackgroundServer] = []
    closers: list[Any] = []
    try:
        idp = make_idp(folder)
        engine = TurnEngine(words=6)
        engine.free.set()
        settings = EnclaveSettings(data_dir=folder / "enclave", platform="sim",
                                   sim_measurement=MEASUREMENT, audit_store="memory",
                                   commitment_key_file=write_commitment_key(folder / "t.key"),
                                   auth_issuer=ISSUER, auth_jwks_file=idp.jwks,
                                   auth_tenants=(TENANT,))
        booted: Booted = boot(settings, engine_factory=lambda path, s: engine)
        closers += [booted.close, engine.close]
        enclave = enclave_app(booted.service, settings)
        _ops(enclave).tracing = Tracing("enclave", spans)
        enclave_server = BackgroundServer(enclave).start()
        servers.append(enclave_server)
        assert booted.platform.sim_root is not None
        session = EnclaveSession(enclave_server.url, sim_policy(),
                                 sim_roots=frozenset({booted.platform.sim_root}))
        closers.append(session.close)
        proxy = create_proxy_app(session, tracing=Tracing("proxy", spans))
        servers.append(BackgroundServer(proxy).start())

        authority = sim.SimAuthority.load_or_create(folder / "sim")
        kbs_settings = KbsSettings(data_dir=folder / "kbs", store="memory",
                                   sim_roots=(authority.root_fingerprint,),
                                   rate_per_second=1000.0, rate_burst=1000)
        broker = build_broker(kbs_settings, wrapper=AesGcmKek(os.urandom(32)))
        kbs = kbs_app(kbs_settings, broker=broker)
        servers.append(BackgroundServer(kbs).start())

        token_service = build_service(folder / "idp-http", issuer="http://127.0.0.1")
        token_service.directory.add_client("ward-app", "s3cret-value", tenant=TENANT,
                                           roles=["clinician"])
        idp_http = idp_app(token_service)
        servers.append(BackgroundServer(idp_http).start())

        apps = {"enclave": enclave, "proxy": proxy, "kbs": kbs, "idp": idp_http}
        urls = dict(zip(("enclave", "proxy", "kbs", "idp"), (s.url for s in servers),
                        strict=True))
        ops = {name: _ops(app) for name, app in apps.items()}
        metrics = {name: MetricsServer(o.metrics, "127.0.0.1", 0) for name, o in ops.items()}
        closers += [m.stop for m in metrics.values()]
        stack = Stack(urls, ops, metrics, spans, logs, idp.token(sub="dr-alice"), urls["kbs"])
        _drive(stack, authority, broker)
        yield stack
    finally:
        for server in reversed(servers):
            server.stop()
        for close in reversed(closers):
            close()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def _drive(stack: Stack, authority: sim.SimAuthority, broker: Any) -> None:
    proxy = stack.urls["proxy"]
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=stack.idp_token, max_retries=0,
                           default_headers={"X-Request-Id": REQUEST_ID})
    answer = client.chat.completions.create(model="smollm2-135m-instruct",
                                            messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=proxy + "/v1", api_key="not-a-token", max_retries=0
                      ).chat.completions.create(model="smollm2-135m-instruct",
                                                messages=[{"role": "user", "content": PROMPT}])
    # The broker: one release granted, one refused (another build), one unknown owner call.
    kbs = stack.broker_url
    provision(kbs, broker.issue_owner_token("vendor"), policy=release_policy())
    with KbsClient(kbs, sim_attester(authority), trusted=trusting(broker), runtime={}) as c:
        assert len(c.fetch(RESOURCE)) == 32
    with KbsClient(kbs, sim_attester(authority, measurement=OTHER_MEASUREMENT),
                   trusted=trusting(broker), runtime={}) as c, pytest.raises(MedclaveError):
        c.fetch(RESOURCE)
    assert httpx.get(kbs + "/kbs/v1/owner/resources",
                     headers={"authorization": "Bearer nope"}).status_code in (401, 404)
    # The IdP: a token, and a refused client.
    idp = stack.urls["idp"]
    good = httpx.post(idp + "/token", data={"grant_type": "client_credentials"},
                      auth=("ward-app", "s3cret-value"))
    assert good.status_code == 200, good.text
    bad = httpx.post(idp + "/token", data={"grant_type": "client_credentials"},
                     auth=("ward-app", "wrong"))
    assert bad.status_code == 401


def test_every_service_is_alive_ready_and_documented(stack: Stack) -> None:
    for name, url in stack.urls.items():
        assert httpx.get(url + "/healthz").json() == {"status": "alive"}, name
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200, (name, ready.text)
        assert ready.json()["status"] == "ready"
        assert set(ready.json()["checks"].values()) == {"ok"}
        doc = httpx.get(url + "/openapi.json").json()
        assert doc["openapi"].startswith("3.") and "/readyz" in doc["paths"], name


def _scrape(stack: Stack, name: str) -> list[tuple[str, dict[str, str], float]]:
    response = httpx.get(stack.metrics[name].url)
    assert response.status_code == 200
    return samples(response.text)


def test_metrics_label_values_come_from_the_allow_lists(stack: Stack) -> None:
    for name in stack.urls:
        scraped = _scrape(stack, name)
        assert scraped, name
        for metric, labels, _ in scraped:
            assert set(labels) <= LABELS, (metric, labels)
            for key, value in labels.items():
                assert not any(p in value for p in PHI), (metric, labels)
                if key == "service":
                    assert value == name
                elif key == "route":
                    assert value in ROUTES[name], (metric, value)
                elif key == "method":
                    assert value in METHODS
                elif key == "status":
                    assert re.fullmatch(r"[1-5][0-9][0-9]", value)
                elif key == "code":
                    assert value in CATALOGUE or value == "other", value
                elif key == "outcome":
                    assert value in OUTCOMES
                elif key == "le":
                    float(value)  # a bucket bound, a number


def _value(scraped: list[tuple[str, dict[str, str], float]], metric: str,
           **labels: str) -> float:
    return sum(v for m, lab, v in scraped
               if m == metric and all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_count_what_happened(stack: Stack) -> None:
    proxy = _scrape(stack, "proxy")
    assert _value(proxy, "medclave_requests_total", route="/v1/chat/completions",
                  status="200") == 1
    assert _value(proxy, "medclave_requests_total", route="/v1/chat/completions",
                  status="401") == 1
    assert _value(proxy, "medclave_request_duration_seconds_count",
                  route="/v1/chat/completions") == 2
    assert _value(proxy, "medclave_attestation_age_seconds") >= 0
    enclave = _scrape(stack, "enclave")
    refused = [lab["code"] for m, lab, v in enclave if m == "medclave_refusals_total" and v]
    assert refused and all(code.startswith("auth.") for code in refused)
    assert _value(enclave, "medclave_engine_tokens_total") == 6  # the TurnEngine's six words
    assert _value(enclave, "medclave_audit_entries") >= 1
    assert _value(enclave, "medclave_engine_queue_depth") == 0
    assert any(m == "medclave_attestation_age_seconds" for m, _, _ in enclave)
    assert any(m == "medclave_audit_checkpoint_age_seconds" for m, _, _ in enclave)
    kbs = _scrape(stack, "kbs")
    assert _value(kbs, "medclave_key_releases_total", outcome="allowed") == 1
    assert _value(kbs, "medclave_key_releases_total", outcome="refused") == 1
    assert _value(kbs, "medclave_refusals_total") >= 2
    idp = _scrape(stack, "idp")
    assert _value(idp, "medclave_refusals_total", code="auth.invalid_credentials") == 1
    assert _value(idp, "medclave_requests_total", route="/token", status="200") == 1


def _log_lines(stack: Stack) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stack.logs.getvalue().splitlines()]


def test_logs_are_json_of_one_shape_without_phi(stack: Stack) -> None:
    lines = _log_lines(stack)
    assert lines
    for line in lines:
        assert set(line) >= LOG_KEYS, line
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        text = json.dumps(line)
        assert not any(p in text for p in PHI), line


def test_the_request_id_follows_the_request_into_the_enclave(stack: Stack) -> None:
    enclave_lines = [line for line in _log_lines(stack)
                     if line["logger"] == "medclave.enclave"
                     and line["message"].startswith("request ")]
    assert any(line["request_id"] == REQUEST_ID and "status=200" in line["message"]
               for line in enclave_lines), enclave_lines


def test_broker_refusals_are_logged_at_info(stack: Stack) -> None:
    refusals = [line for line in _log_lines(stack) if line["logger"] == "medclave.kbs"
                and "refused" in line["message"]]
    assert refusals and all(line["level"] == "INFO" for line in refusals)


def test_one_trace_runs_from_the_proxy_through_the_engine_to_the_audit_log(stack: Stack
                                                                           ) -> None:
    spans = stack.spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    audit = [s for s in spans if s.name == "audit log append"]
    assert audit
    chain = []
    node: Any = audit[0]
    while node is not None:
        chain.append(node)
        node = by_id.get(node.parent.span_id) if node.parent is not None else None
    names = [s.name for s in chain]
    services = [s.attributes.get("medclave.service") for s in chain]
    # audit <- enclave's POST /v1/ohttp <- proxy's POST /v1/chat/completions
    assert names[0] == "audit log append" and names[-1] == "POST /v1/chat/completions"
    assert "POST /v1/ohttp" in names
    assert services[-1] == "proxy" and "enclave" in services
    assert len({s.context.trace_id for s in chain}) == 1
    assert any(s.name == "engine generate" and s.context.trace_id == chain[0].context.trace_id
               for s in spans)
    for span in spans:
        assert set(span.attributes or {}) <= SPAN_ATTRIBUTES, span.attributes
        text = json.dumps(dict(span.attributes or {})) + span.name
        assert not any(p in text for p in PHI)


def test_readiness_fails_closed_when_a_check_fails(stack: Stack) -> None:
    ops = stack.ops["kbs"]
    ops.health.add("store", lambda: False)
    try:
        got = httpx.get(stack.urls["kbs"] + "/readyz")
        assert got.status_code == 503
        assert got.json()["checks"]["store"] == "failing"
    finally:
        ops.health.add("store", lambda: True)


def test_a_malformed_request_id_is_replaced(stack: Stack) -> None:
    # Not a plain token: a new id is made, the header never reaches a log line.
    hostile = "Zanzibar Quixote; drop table"
    got = httpx.post(stack.urls["proxy"] + "/v1/chat/completions", content=b"not json",
                     headers={"x-request-id": hostile, "content-type": "application/json"})
    assert got.status_code == 400
    lines = _log_lines(stack)
    refusal = [line for line in lines if line["logger"] == "medclave.proxy"
               and "input.malformed" in line["message"]][-1]
    assert re.fullmatch(r"[0-9a-f]{24}", refusal["request_id"])
    assert not any("Zanzibar" in str(line["request_id"]) for line in lines)
