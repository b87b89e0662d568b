"""Enclave replicas behind HAProxy (issue 17): throughput and p99 latency at 1, 2 and 3
replicas, and the ratio against one.

The stack: three enclaves (sim, llama.cpp with the bundled SmolLM2, one thread each, each its own
process), HAProxy from Debian in front of them (``ops/balancer.py``'s configuration), and one
proxy per level in this process, attesting and routing across the first 1, 2 or 3 replicas
(``client/replicas.py``). The load comes from a second process (this module run with ``--load``:
Python threads with httpx: an LLM request takes hundreds of milliseconds, well within what a
load generator in Python drives; Debian's wrk was tried and is not used yet, see
docs/scaling-out.md): ``clients`` concurrent clients send whole chat completions (greedy,
``tokens`` tokens) until ``requests`` are answered or ``seconds`` have passed, whichever comes
first. Every level gets the same offered load.

Rows, the levels alternating in rounds (benchmarks._common.interleave): requests/s (answered
over the wall time of the round) and p99 latency (nearest rank, each request timed alone); the
ratio of each level against one replica. On a 2-core machine three one-thread replicas contend
for two cores: the third is expected to add little.

Options (environment): MEDCLAVE_BENCH_REPLICAS_REQUESTS (per round, default 24),
MEDCLAVE_BENCH_REPLICAS_SECONDS (per round, at most, default 60), MEDCLAVE_BENCH_REPLICAS_CLIENTS
(default 6), MEDCLAVE_BENCH_REPLICAS_TOKENS (default 16); MEDCLAVE_BENCH_ROUNDS (>= 5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import Report, env_float, env_int, interleave, percentile

LEVELS = (1, 2, 3)
MODEL = "smollm2-135m-instruct"
PROMPT = "List three symptoms of dehydration."


def main() -> None:
    from tests.e2e.helpers import make_idp, sim_policy
    from tests.e2e.replica_helpers import HAProxy, start_replicas

    from medclave.background import BackgroundServer
    from medclave.client.proxy import create_proxy_app
    from medclave.client.replicas import ReplicaSet

    requests = env_int("MEDCLAVE_BENCH_REPLICAS_REQUESTS", 24)
    seconds = env_float("MEDCLAVE_BENCH_REPLICAS_SECONDS", 60.0)
    clients = env_int("MEDCLAVE_BENCH_REPLICAS_CLIENTS", 6)
    tokens = env_int("MEDCLAVE_BENCH_REPLICAS_TOKENS", 16)
    names = [f"r{i}" for i in range(1, max(LEVELS) + 1)]
    with tempfile.TemporaryDirectory(prefix="medclave-bench-replicas-") as tmp:
        folder = Path(tmp)
        idp = make_idp(folder)
        replicas = start_replicas(folder / "replicas", idp, names)
        lb = HAProxy(folder / "haproxy", {n: r.port for n, r in replicas.items()})
        roots = frozenset(r.sim_root for r in replicas.values())
        proxies: dict[int, tuple[ReplicaSet, BackgroundServer]] = {}
        try:
            for level in LEVELS:
                rs = ReplicaSet(lb.url, names[:level], sim_policy(), sim_roots=roots)
                proxies[level] = (rs, BackgroundServer(create_proxy_app(rs),
                                                       name=f"proxy-{level}").start())
            token = idp.token()
            p99: dict[int, list[float]] = {level: [] for level in LEVELS}

            def measure(level: int) -> float:
                out = _load(proxies[level][1].url, token, clients=clients, requests=requests,
                            seconds=seconds, tokens=tokens)
                p99[level].append(out["p99"])
                return float(out["rate"])

            for level in LEVELS:  # warm-up: every replica attested, every model paged in
                _load(proxies[level][1].url, token, clients=level, requests=2 * level,
                      seconds=seconds, tokens=2)
            rates = interleave({f"{level}": (lambda lv=level: measure(lv)) for level in LEVELS})
        finally:
            for rs, server in proxies.values():
                server.stop()
                rs.close()
            lb.stop()
            for r in replicas.values():
                r.stop()
    report = Report("replicas", "Enclave replicas behind HAProxy: throughput and p99")
    base = rates["1"]
    report.baseline("1 replica: requests/s", base, "req/s")
    for level in LEVELS[1:]:
        report.row(f"{level} replicas: requests/s", rates[str(level)], "req/s", baseline=base)
    report.baseline("1 replica: p99 latency", p99[1], "s")
    for level in LEVELS[1:]:
        report.row(f"{level} replicas: p99 latency", p99[level], "s", baseline=p99[1])
    report.note(f"{clients} clients in a second process (Python, httpx), {tokens} tokens per "
                f"answer, at most {requests} requests or {seconds:.0f} s per round; llama.cpp "
                f"with 1 thread per replica; {os.cpu_count()} CPUs")
    report.emit()


def _load(url: str, token: str, *, clients: int, requests: int, seconds: float, tokens: int
          ) -> dict[str, Any]:
    """One round of load from a second process; its summary."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.replicas", "--load", url, "--clients", str(clients),
         "--requests", str(requests), "--seconds", str(seconds), "--tokens", str(tokens)],
        capture_output=True, text=True, timeout=seconds + 120,
        env={**os.environ, "MEDCLAVE_BENCH_TOKEN": token}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load process failed: {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    if out["errors"]:
        raise RuntimeError(f"{out['errors']} requests failed: {out['first_error']}")
    return out


def generate(url: str, token: str, *, clients: int, requests: int, seconds: float,
             tokens: int) -> dict[str, Any]:
    """The load generator (the second process): ``clients`` threads, each with its own
    connection, until ``requests`` are answered or ``seconds`` have passed."""
    import httpx

    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    started = [0]
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens, "temperature": 0}
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=seconds + 60,
                          headers={"authorization": f"Bearer {token}"}) as http:
            while time.perf_counter() < deadline:
                with lock:
                    if started[0] >= requests:
                        return
                    started[0] += 1
                t0 = time.perf_counter()
                answer = http.post("/v1/chat/completions", json=body)
                took = time.perf_counter() - t0
                with lock:
                    if answer.status_code == 200:
                        latencies.append(took)
                    else:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"answered": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "rate": len(latencies) / wall if latencies else 0.0,
            "p99": percentile(latencies, 0.99) if latencies else float("nan"), "wall": wall}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load", required=True, help="the proxy's URL")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(generate(args.load, os.environ["MEDCLAVE_BENCH_TOKEN"],
                              clients=args.clients, requests=args.requests,
                              seconds=args.seconds, tokens=args.tokens)))
