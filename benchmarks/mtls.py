"""Attested micro-segmentation: what mutual TLS costs a service-to-service request.

Two servers on 127.0.0.1 in this process, the same tiny app behind each (uvicorn, the services'
own configuration, ``serving.server_config``): one plain HTTP, one mutual TLS with mesh
certificates (ECDSA P-256, TLS 1.3, the peer's identity checked on both ends against the
segmentation policy and the deny list, as every service does). The client is httpx, as the
proxy and the enclave's broker client are. Each figure is the p50 of MEDCLAVE_BENCH_MTLS_N
requests (default 40) per round, measured in interleaved rounds (benchmarks._common).

Baseline: plain HTTP, a new TCP connection per request (``Connection: close``).
  mTLS, full handshake         a new connection and a full TLS 1.3 handshake (certificates both
                               ways, ECDSA signatures, both identity checks) per request
  mTLS, session resumption     a new connection per request resuming the last TLS 1.3 session
                               (PSK with ECDHE; the identity checks still run on the session's
                               certificates)
  mTLS, keep-alive             one connection for all requests: the handshake amortized away
  plain HTTP, keep-alive       for scale
  mTLS via passthrough LB      the same two mTLS cases through HAProxy in ``mode tcp`` routing
                               on the server name (enclave replicas in the mesh,
                               docs/scaling-out.md), the replica's identity checked; only when
                               haproxy is installed

Run: ``PYTHONPATH=src python -m benchmarks mtls`` (``MEDCLAVE_BENCH_MTLS_N``,
``MEDCLAVE_BENCH_ROUNDS``).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI

from benchmarks._common import Report, env_int, interleave, timings
from medclave.background import BackgroundServer
from medclave.mesh.certs import MeshCA, new_key
from medclave.mesh.policy import SegmentationPolicy, WorkloadId
from medclave.mesh.tls import DenyList, MeshTls
from medclave.protocol.inference import replica_server_name
from medclave.serving import MeshServing

POLICY = SegmentationPolicy("bench", frozenset({("proxy", "enclave")}))
CLAIMS = {"measurement": ["ab" * 48]}


def _workload(ca: MeshCA, role: str, *, resumption: bool = True) -> MeshTls:
    now = datetime.now(UTC)
    identity = WorkloadId.of("bench", role, f"{role}-1")
    key = new_key()
    cert = ca.issue(identity, key.public_key(), claims=CLAIMS, now=now,
                    lifetime=timedelta(hours=1))
    tls = MeshTls(identity, ca_pem=ca.pem, policy=POLICY, resumption=resumption,
                  deny=DenyList(lambda: {"measurement": frozenset({"cd" * 48})}))
    assert tls.deny is not None
    tls.deny.refresh()
    tls.install(key, cert.public_bytes(Encoding.PEM), cert.not_valid_after_utc)
    return tls


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def _p50(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up: the first connection (and the first session ticket)
    return statistics.median(t * 1e3 for t in timings(fn, n))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else env_int("MEDCLAVE_BENCH_MTLS_N", 40)
    logging.getLogger("medclave").setLevel(logging.ERROR)
    ca = MeshCA.generate("bench", now=datetime.now(UTC))
    enclave = _workload(ca, "enclave")
    proxy = _workload(ca, "proxy")
    proxy_full = _workload(ca, "proxy", resumption=False)
    close = {"connection": "close"}
    with contextlib.ExitStack() as stack:
        plain_server = stack.enter_context(BackgroundServer(_app()))
        mesh_server = stack.enter_context(BackgroundServer(_app(), mesh=MeshServing(enclave)))
        plain = stack.enter_context(httpx.Client())
        plain_kept = stack.enter_context(httpx.Client())
        full = stack.enter_context(httpx.Client(verify=proxy_full.client_context("enclave")))
        resumed = stack.enter_context(httpx.Client(verify=proxy.client_context("enclave")))
        kept = stack.enter_context(httpx.Client(verify=proxy.client_context("enclave")))
        plain_url, mesh_url = plain_server.url + "/ping", mesh_server.url + "/ping"

        def call(client: httpx.Client, url: str, headers: dict[str, str]) -> Callable[[], None]:
            def once() -> None:
                response = client.get(url, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text}")
            return once

        measures: dict[str, Callable[[], float]] = {
            "plain": lambda: _p50(call(plain, plain_url, close), n),
            "full": lambda: _p50(call(full, mesh_url, close), n),
            "resumed": lambda: _p50(call(resumed, mesh_url, close), n),
            "kept": lambda: _p50(call(kept, mesh_url, {}), n),
            "plain kept": lambda: _p50(call(plain_kept, plain_url, {}), n),
        }
        from tests.e2e.replica_helpers import HAProxy, haproxy_binary

        if haproxy_binary() is not None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            lb = HAProxy(folder, {"enclave-1": mesh_server.port}, tls_passthrough=True)
            stack.callback(lb.stop)

            def via_lb(p: MeshTls) -> httpx.Client:
                return stack.enter_context(httpx.Client(verify=p.client_context(
                    "enclave", server_name=replica_server_name("enclave-1"),
                    expect_name="enclave-1")))

            lb_url = lb.url.replace("http://", "https://") + "/ping"
            lb_full, lb_kept = via_lb(proxy_full), via_lb(proxy)
            measures["lb full"] = lambda: _p50(call(lb_full, lb_url, close), n)
            measures["lb kept"] = lambda: _p50(call(lb_kept, lb_url, {}), n)
        got = interleave(measures)
    report = Report("mtls", f"service-to-service request on loopback, p50 of {n} per round")
    base = got["plain"]
    report.baseline("plain HTTP, new connection", base, "ms p50")
    report.row("mTLS, full handshake", got["full"], "ms p50", baseline=base)
    report.row("mTLS, session resumption", got["resumed"], "ms p50", baseline=base)
    report.row("mTLS, keep-alive", got["kept"], "ms p50", baseline=base)
    report.row("plain HTTP, keep-alive", got["plain kept"], "ms p50", baseline=base)
    if "lb full" in got:
        report.row("mTLS via passthrough LB, full handshake", got["lb full"], "ms p50",
                   baseline=base)
        report.row("mTLS via passthrough LB, keep-alive", got["lb kept"], "ms p50",
                   baseline=base)
        report.ratio_note("passthrough LB / direct, full handshake", got["lb full"],
                          got["full"])
        report.ratio_note("passthrough LB / direct, keep-alive", got["lb kept"], got["kept"])
    overhead = {k: statistics.median(v) - statistics.median(base)
                for k, v in got.items() if k in ("full", "resumed")}
    report.note(f"handshake overhead per request (median minus baseline median): full "
                f"{overhead['full']:.2f} ms, resumed {overhead['resumed']:.2f} ms")
    report.ratio_note("resumed / full", got["resumed"], got["full"])
    report.emit()


if __name__ == "__main__":
    main()
