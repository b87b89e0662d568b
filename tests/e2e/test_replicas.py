"""Several enclave replicas behind a real HAProxy (issue 17): the proxy attests every replica,
routes across the verified ones, re-attests on a key change, and fails over when a replica
dies, never sending twice a request that may have reached an engine.

Real processes on 127.0.0.1: two enclaves (sim, llama.cpp with the bundled model, each in its
own process so that one can be SIGKILLed), HAProxy from Debian with the configuration
``ops/balancer.py`` renders, the proxy, the official ``openai`` client (``max_retries=0``: the
test judges the proxy's retries, not the SDK's).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from medclave.background import BackgroundServer
from medclave.client.continuous import TrustWatch
from medclave.client.proxy import create_proxy_app
from medclave.client.replicas import ReplicaSet
from medclave.enclave.keys import KeyRing
from medclave.util.clock import system_clock
from tests.e2e.helpers import FakeEngine, Idp, Relay, SlowEngine, audit_log, sim_policy, start_enclave
from tests.e2e.replica_helpers import Cable, HAProxy, Replica, haproxy_binary, start_replicas

OTHER_MEASUREMENT = "ab" * 48
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module", autouse=True)
def _haproxy_installed() -> None:
    if haproxy_binary() is None:
        if os.environ.get("MEDCLAVE_REQUIRE_VECTORS") == "1":
            pytest.fail("haproxy is required (.ci/run installs it)")
        pytest.skip("haproxy is not installed")


@pytest.fixture(scope="module")
def replicas(folder: Path, idp: Idp) -> Iterator[dict[str, Replica]]:
    started = start_replicas(folder / "replicas", idp, ["r1", "r2"])
    yield started
    for r in started.values():
        r.stop()


@pytest.fixture(scope="module")
def balancer(folder: Path, replicas: dict[str, Replica]) -> Iterator[HAProxy]:
    lb = HAProxy(folder / "haproxy", {n: r.port for n, r in replicas.items()})
    yield lb
    lb.stop()


class Proxy:
    def __init__(self, upstream: str, names: list[str], sim_roots: set[str]) -> None:
        self.set = ReplicaSet(upstream, names, sim_policy(), sim_roots=frozenset(sim_roots),
                              down_after_failure=timedelta(seconds=1),
                              timeout=60)
        self.watch = TrustWatch(self.set, poll=0.2)
        self.server = BackgroundServer(create_proxy_app(self.set), name="test-proxy").start()

    def client(self, idp: Idp) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=idp.token(),
                             max_retries=0, timeout=60)

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.server.url}/medclave/status").json()
        return answer

    def close(self) -> None:
        self.watch.stop()
        self.server.stop()
        self.set.close()


def _ask(client: openai.OpenAI, prompt: str, tokens: int = 6) -> tuple[str, str, str]:
    """One whole chat answer: (replica, request id, content)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
        temperature=0)
    answer = raw.parse()
    return (raw.headers["medclave-replica"], raw.headers["x-request-id"],
            answer.choices[0].message.content or "")


def test_two_replicas_serve_the_openai_client_through_haproxy(
        replicas: dict[str, Replica], balancer: HAProxy, idp: Idp) -> None:
    with Relay(balancer.url) as relay:  # what the operator's network sees, byte for byte
        proxy = Proxy(relay.url, ["r1", "r2"], {r.sim_root for r in replicas.values()})
        try:
            client = proxy.client(idp)
            # The first requests arrive together: the replicas are attested once, not once
            # per request.
            with ThreadPoolExecutor(4) as pool:
                served = list(pool.map(lambda i: _ask(client, f"Name organ number {i} of the "
                                                       "body."), range(4)))
            served += [_ask(client, f"Name organ number {i} of the body.") for i in (4, 5)]
            with client.chat.completions.with_streaming_response.create(
                    model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                    max_tokens=4, stream=True) as streamed:
                events = [line for line in streamed.iter_lines() if line]
            status = proxy.status()
        finally:
            proxy.close()
    assert {r for r, _, _ in served} == {"r1", "r2"}  # routed across both
    assert len({rid for _, rid, _ in served}) == 6
    attested = [dict(e.request_headers)["medclave-replica"] for e in relay.attestations()]
    assert sorted(attested) == ["r1", "r2"]
    assert all(content for _, _, content in served)
    assert events[-1] == "data: [DONE]"
    assert streamed.headers["medclave-replica"] in ("r1", "r2")
    # Each replica attested on its own: its own evidence, OHTTP key and audit origin.
    states = status["replicas"]
    assert {n: s["trust"]["state"] for n, s in states.items()} == {"r1": "verified",
                                                                   "r2": "verified"}
    assert states["r1"]["enclave"]["evidence_sha256"] != states["r2"]["enclave"]["evidence_sha256"]
    keys = {n: proxy.set.session(n).enclave.key_config for n in ("r1", "r2")}  # type: ignore[union-attr]
    assert keys["r1"].public_key != keys["r2"].public_key
    # The balancer routed each replica's traffic to that replica, and saw only ciphertext.
    assert balancer.posts_to("r1") >= 1 and balancer.posts_to("r2") >= 1
    recording = relay.recording()
    for _, _, content in served:
        assert content.strip().encode() not in recording
    assert b"organ number" not in recording and b"Say hello" not in recording
    assert all(dict(e.request_headers).get("medclave-replica") in ("r1", "r2")
               for e in relay.exchanges)


def test_a_replica_whose_evidence_fails_is_never_routed_to(
        folder: Path, replicas: dict[str, Replica], idp: Idp) -> None:
    spy = FakeEngine()
    impostor = start_enclave(folder / "impostor", idp, engine=spy,
                             measurement=OTHER_MEASUREMENT)  # a build the policy does not list
    lb = HAProxy(folder / "haproxy-impostor", {"r1": replicas["r1"].port,
                                               "bad": impostor.server.port})
    proxy = Proxy(lb.url, ["bad", "r1"], {replicas["r1"].sim_root, impostor.sim_root})
    try:
        client = proxy.client(idp)
        served = [_ask(client, f"Question {i}?", tokens=2) for i in range(4)]
        status = proxy.status()
    finally:
        proxy.close()
        lb.stop()
        impostor.stop()
    assert [r for r, _, _ in served] == ["r1"] * 4
    bad = status["replicas"]["bad"]
    assert bad["trust"]["state"] == "failed"
    assert bad["trust"]["code"] == "attestation.measurement_mismatch"
    assert status["replicas"]["r1"]["trust"]["state"] == "verified"
    # The balancer's own log: the impostor was asked for evidence, never sent a request.
    gets = [x for x in lb.requests() if x[1] == "bad" and x[3] == "GET"]
    assert gets and lb.posts_to("bad") == 0 and lb.posts_to("r1") == 4
    assert spy.calls == []


@pytest.mark.parametrize("change", ["rotated", "same-key-id"])
def test_a_replica_whose_key_changes_is_attested_again(folder: Path, idp: Idp,
                                                       change: str) -> None:
    """A rotation past its grace period (the enclave answers crypto.key_unknown) and a new key
    under the old key id, as after a restart (crypto.decrypt_failed): the proxy attests the
    replica again, takes the new key from the verified evidence, and the request is served
    once."""
    spy = FakeEngine()
    enclave = start_enclave(folder / f"rotating-{change}", idp, engine=spy,
                            key_grace_seconds=0)
    lb = HAProxy(folder / f"haproxy-{change}", {"k1": enclave.server.port})
    proxy = Proxy(lb.url, ["k1"], {enclave.sim_root})
    try:
        client = proxy.client(idp)
        _ask(client, "first")
        before = proxy.set.session("k1").enclave
        assert before is not None
        service = enclave.booted.service
        if change == "rotated":
            service.keys.rotate()
        else:
            service.keys = KeyRing(system_clock, first_key_id=before.key_config.key_id)
        replica, _, content = _ask(client, "second")
        after = proxy.set.session("k1").enclave
    finally:
        proxy.close()
        lb.stop()
        enclave.stop()
    assert replica == "k1" and content
    assert after is not None and after is not before
    assert after.key_config == service.keys.config != before.key_config
    attestations = [x for x in lb.requests() if x[3] == "GET" and x[4] == "/v1/attestation"]
    assert len(attestations) == 2
    assert spy.calls == ["chat", "chat"]  # each request reached the engine once


def test_sigkill_midway_the_client_keeps_getting_answers_none_twice(
        replicas: dict[str, Replica], balancer: HAProxy, idp: Idp) -> None:
    """A replica is SIGKILLed while it streams an answer: that stream breaks (it reached an
    engine: never replayed), every later request is answered by the other replica, each
    answered request is in exactly one audit log once; the killed replica, restarted with a
    new key, is attested again and serves again."""
    earlier = Counter(replicas["r1"].audit_request_ids() + replicas["r2"].audit_request_ids())
    proxy = Proxy(balancer.url, ["r1", "r2"], {r.sim_root for r in replicas.values()})
    proxy.watch.start()
    answered: list[tuple[str, str, str]] = []
    try:
        client = proxy.client(idp)
        answered += [_ask(client, f"Warm-up question {i}?", tokens=2) for i in range(2)]
        with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=[{"role": "user", "content": "Write a long essay "
                                            "on the history of medicine."}],
                max_tokens=400, stream=True) as streamed:
            victim = streamed.headers["medclave-replica"]
            killed_rid = streamed.headers["x-request-id"]
            lines = streamed.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            old_key = proxy.set.session(victim).enclave.key_config  # type: ignore[union-attr]
            replicas[victim].kill()
            # The stream breaks (the openai client's own HTTP library says so): the proxy
            # does not replay it elsewhere, as its prompt reached the victim's engine.
            with pytest.raises(Exception, match="incomplete chunked read"):
                list(lines)
        survivor = "r2" if victim == "r1" else "r1"
        after = [_ask(client, f"After the crash, question {i}?", tokens=2) for i in range(4)]
        answered += after
        assert [r for r, _, _ in after] == [survivor] * 4
        # Some of them were first routed to the victim (turns alternate): the balancer could
        # not connect and said so (its own 503), so the proxy sent them to the survivor.
        assert any(b == f"replica-{victim}" and st == "503" and m == "POST"
                   for b, _, st, m, _ in balancer.requests())
        assert proxy.status()["replicas"][victim]["up"] is False
        # The victim comes back (a new process: a new OHTTP key); the watch attests it again.
        replicas[victim].start().wait_ready()
        new_key = None
        for _ in range(400):
            session = proxy.set.session(victim)
            if session.enclave is not None and session.enclave.key_config != old_key:
                new_key = session.enclave.key_config
                break
            time.sleep(0.05)
        assert new_key is not None, proxy.status()
        back = [_ask(client, f"Back again, question {i}?", tokens=2) for i in range(3)]
        answered += back
        assert victim in {r for r, _, _ in back}
    finally:
        proxy.close()
    rids = [rid for _, rid, _ in answered]
    assert len(set(rids)) == len(rids)
    logged = list((Counter(replicas["r1"].audit_request_ids() + replicas["r2"].audit_request_ids())
                   - earlier).elements())
    # Every answered request is in exactly one log, once; the killed stream at most once (it
    # was not replayed); nothing else was served.
    for rid in rids:
        assert logged.count(rid) == 1
    assert logged.count(killed_rid) <= 1
    assert len(logged) == len(rids) + logged.count(killed_rid)


def test_a_request_lost_after_it_was_sent_is_never_replayed(folder: Path, idp: Idp) -> None:
    """The replica dies (its connections reset) while its engine works on a whole request:
    the balancer answers 502, the proxy answers ``client.upstream_lost`` and sends the request
    nowhere else, as it was served (its audit entry is there); the next request goes to the
    other replica."""
    slow, spy = SlowEngine(words=3), FakeEngine()
    victim = start_enclave(folder / "victim", idp, engine=slow, audit_store="memory")
    other = start_enclave(folder / "other", idp, engine=spy)
    cable = Cable(victim.server.port)
    lb = HAProxy(folder / "haproxy-lost", {"v": cable.port, "o": other.server.port})
    proxy = Proxy(lb.url, ["v", "o"], {victim.sim_root, other.sim_root})
    try:
        client = proxy.client(idp)
        proxy.set.current()  # both attested before the request
        proxy.set.session("o").fail("client.upstream_failed", "held back for this test")
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.append(
            _try(client, "lost in flight")))
        worker.start()
        assert slow.wait_busy(1)  # the prompt is in the victim's engine
        cable.cut()
        slow.opened.set()  # the engine finishes; its answer has nowhere to go
        worker.join(60)
        assert not spy.calls  # not replayed on the other replica
        proxy.set.session("o").attest()  # the other replica is back in service
        replica, _, content = _ask(client, "next one")
    finally:
        proxy.close()
        lb.stop()
        cable.close()
        victim.stop()
        other.stop()
    error = results[0]
    assert isinstance(error, openai.APIStatusError) and error.status_code == 502
    assert error.body["code"] == "client.upstream_lost"  # type: ignore[index]
    assert replica == "o" and content and spy.calls == ["chat"]
    assert audit_log(victim).size == 1  # it was served: an inference and an audit entry
    assert ("replica-v", "v", "502", "POST", "/v1/ohttp") in lb.requests()


def _try(client: openai.OpenAI, prompt: str) -> Any:
    try:
        return _ask(client, prompt)
    except openai.APIError as exc:
        return exc
