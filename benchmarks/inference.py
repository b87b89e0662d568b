"""The whole confidential path against llama-cpp-python called directly, in the same run.

Confidential path: the official ``openai`` client -> the Medclave proxy (attests, pins, OHTTP
encapsulates, verifies the audit receipt) -> the enclave server (decapsulates, checks the token
and Cedar policy, runs llama.cpp, appends a signed audit entry to SQLite, encapsulates) and back;
every hop is real HTTP on 127.0.0.1; proxy and enclave each run in their own process, as they
would on their own machines; the enclave on sim. Baseline:
``llama_cpp.Llama.create_chat_completion`` in-process, same GGUF, same threads, same prompts and
parameters (greedy, fixed seed).

Rows:
* tokens/s for 64-token answers, sequential (goal: ratio >= 0.95);
* added latency per request, p50 and p99 (goal: p50 <= 5 ms): the confidential path with an
  instant engine (everything but inference), so the engine's own jitter does not hide it; and
  as a cross-check, paired 1-token requests with the real engine (difference of medians);
* time to first token, streamed (chunked OHTTP vs ``stream=True``);
* throughput with 1, 4 and 16 concurrent clients, two requests each (llama.cpp serialises on
  its context either way, so this shows the path's cost under queueing, not parallel speed-up).

``MEDCLAVE_BENCH_THREADS`` sets llama.cpp threads (default: 2).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROMPTS = [
    "Explain in detail how beta-blockers lower blood pressure.",
    "Describe the stages of wound healing after surgery.",
    "List the common causes of chest pain and how to tell them apart.",
    "Explain how insulin regulates blood glucose in the body.",
]
TOKENS = 64
MODEL = "smollm2-135m-instruct"


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Stack:
    proxy_url: str
    token: Callable[[], str]
    stop: Callable[[], None]


class InstantEngine:
    """Answers at once: what is left of a request's time is the path itself."""

    name = "instant"
    build_id = "instant/1"

    def chat(self, messages: Any, params: Any) -> Any:
        from medclave.enclave.engines.base import Completion

        return Completion("ok", "stop", 5, 1)

    def complete(self, prompt: str, params: Any) -> Any:
        return self.chat([], params)

    def chat_stream(self, messages: Any, params: Any) -> Iterator[Any]:
        from medclave.enclave.engines.base import Delta

        yield Delta("ok")
        yield Delta("", "stop", 5, 1)

    def complete_stream(self, prompt: str, params: Any) -> Iterator[Any]:
        return self.chat_stream([], params)

    def close(self) -> None:
        pass


def _enclave_process(folder: str, issuer: str, instant: bool, threads: int, out: Any,
                     stop: Any) -> None:
    """The enclave in its own process, as deployed (it would be another machine)."""
    import logging

    logging.disable(logging.WARNING)
    from medclave.audit import generate_commitment_key
    from medclave.enclave.app import create_app
    from medclave.enclave.boot import boot, default_engine
    from medclave.enclave.server import BackgroundServer
    from medclave.enclave.settings import EnclaveSettings

    key_file = Path(folder) / "tenant.key"  # the tenant's commitment key (sim: a 0600 file)
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(generate_commitment_key())
    settings = EnclaveSettings(data_dir=Path(folder) / "enclave", platform="sim",
                               auth_issuer=issuer, auth_jwks_file=Path(folder) / "jwks.json",
                               auth_tenants=("bench",), audit_store="sqlite", n_threads=threads,
                               commitment_key_file=key_file)
    booted = boot(settings, engine_factory=(lambda p, s: InstantEngine()) if instant
                  else default_engine)
    server = BackgroundServer(create_app(booted.service, settings)).start()
    out.put((server.url, booted.platform.sim_root))
    stop.wait()
    server.stop()
    booted.close()


def _proxy_process(upstream: str, sim_root: str, out: Any, stop: Any) -> None:
    """The hospital's proxy in its own process, as deployed."""
    import logging

    logging.disable(logging.WARNING)
    from medclave.attestation.policy import AppraisalPolicy
    from medclave.attestation.sim import code_measurement
    from medclave.client.proxy import create_proxy_app
    from medclave.client.session import EnclaveSession
    from medclave.enclave.model import DEFAULT_MODEL_SHA256
    from medclave.enclave.server import BackgroundServer

    policy = AppraisalPolicy.model_validate({
        "platforms": ["sim"], "model_digests": [DEFAULT_MODEL_SHA256],
        "platform": {"sim": {"reference_values": {"measurement": [code_measurement().hex()]}}}})
    session = EnclaveSession(upstream, policy, sim_roots=frozenset({sim_root}))
    server = BackgroundServer(create_proxy_app(session)).start()
    out.put(server.url)
    stop.wait()
    server.stop()
    session.close()


def _stack(folder: Path, *, instant: bool, threads: int) -> Stack:
    import json
    import multiprocessing

    from medclave.auth.issuer import TokenIssuer, load_or_create_signing_key

    folder.mkdir(parents=True)
    issuer = TokenIssuer("https://idp.bench.invalid", load_or_create_signing_key(folder / "idp"))
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    ctx = multiprocessing.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    enclave = ctx.Process(target=_enclave_process, daemon=True,
                          args=(str(folder), issuer.issuer, instant, threads, out, stop))
    enclave.start()
    url, sim_root = out.get(timeout=120)
    proxy = ctx.Process(target=_proxy_process, args=(url, sim_root, out, stop), daemon=True)
    proxy.start()
    proxy_url = out.get(timeout=120)

    def token() -> str:
        return issuer.issue(sub="bench", tenant="bench", roles=["clinician"],
                            now=datetime.now(UTC))

    def halt() -> None:
        stop.set()
        for process in (proxy, enclave):
            process.join(timeout=15)
            if process.is_alive():
                process.kill()

    return Stack(proxy_url, token, halt)


def main() -> None:
    import logging

    import llama_cpp
    import openai

    from medclave.enclave.model import default_model_path

    logging.getLogger("medclave").setLevel(logging.ERROR)
    threads = int(os.environ.get("MEDCLAVE_BENCH_THREADS", "2"))
    direct = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048,
                             n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
    # llama.cpp is not thread-safe: direct callers serialise too, here on one worker thread
    # (as the enclave's engine does; it also keeps a single OpenMP thread team).
    direct_worker = ThreadPoolExecutor(max_workers=1)
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as folder:
        real = _stack(Path(folder) / "real", instant=False, threads=threads)
        instant = _stack(Path(folder) / "instant", instant=True, threads=threads)
        try:
            _run(direct, direct_worker, real, instant, openai, threads)
        finally:
            instant.stop()
            real.stop()
            direct_worker.submit(direct.close).result()
            direct_worker.shutdown()


def _run(direct: Any, worker: Any, real: Stack, instant: Stack, openai: Any, threads: int) -> None:
    params = {"temperature": 0.0, "seed": 7}
    app = openai.OpenAI(base_url=f"{real.proxy_url}/v1", api_key="per-request", max_retries=0,
                        timeout=600)
    fast = openai.OpenAI(base_url=f"{instant.proxy_url}/v1", api_key="per-request",
                         max_retries=0)

    def confidential(prompt: str, max_tokens: int) -> int:
        done = app.chat.completions.create(
            model=MODEL, messages=_messages(prompt), max_tokens=max_tokens,
            extra_headers={"Authorization": f"Bearer {real.token()}"}, **params)
        return int(done.usage.completion_tokens)

    def baseline(prompt: str, max_tokens: int) -> int:
        done = worker.submit(direct.create_chat_completion, messages=_messages(prompt),
                           max_tokens=max_tokens, **params).result()
        return int(done["usage"]["completion_tokens"])

    confidential(PROMPTS[0], 4)  # warm both paths (attestation, caches)
    baseline(PROMPTS[0], 4)

    rows: list[tuple[str, str, str, str]] = []

    # 1. tokens per second, 64-token answers, sequential, interleaved so drift hits both
    spent = {"direct": 0.0, "medclave": 0.0}
    made = {"direct": 0, "medclave": 0}
    for prompt in PROMPTS:
        for name, call in (("direct", baseline), ("medclave", confidential)):
            start = time.perf_counter()
            made[name] += call(prompt, TOKENS)
            spent[name] += time.perf_counter() - start
    tps_d = made["direct"] / spent["direct"]
    tps_m = made["medclave"] / spent["medclave"]
    rows.append((f"tokens/s ({TOKENS}-token answers)", f"{tps_d:.1f}", f"{tps_m:.1f}",
                 f"{tps_m / tps_d:.3f} (goal >= 0.95)"))

    # 2. added latency: the whole path with an instant engine
    latencies = []
    for i in range(200):
        start = time.perf_counter()
        fast.chat.completions.create(model=MODEL, messages=_messages(PROMPTS[i % 4]),
                                     max_tokens=8,
                                     extra_headers={"Authorization": f"Bearer {instant.token()}"})
        latencies.append((time.perf_counter() - start) * 1000)
    rows.append(("added latency p50 (instant engine)", "0", f"{_pct(latencies, 0.5):.2f} ms",
                 "goal <= 5 ms"))
    rows.append(("added latency p99 (instant engine)", "0", f"{_pct(latencies, 0.99):.2f} ms",
                 ""))
    pairs_d, pairs_m = [], []
    for i in range(12):
        for store, call in ((pairs_d, baseline), (pairs_m, confidential)):
            start = time.perf_counter()
            call(PROMPTS[i % 4], 1)
            store.append((time.perf_counter() - start) * 1000)
    rows.append(("1-token request p50 (real engine)", f"{statistics.median(pairs_d):.1f} ms",
                 f"{statistics.median(pairs_m):.1f} ms",
                 f"+{statistics.median(pairs_m) - statistics.median(pairs_d):.1f} ms"))

    # 3. time to first token, streamed
    ttft_d, ttft_m = [], []
    def first_token(prompt: str, start: float) -> float:
        for chunk in direct.create_chat_completion(messages=_messages(prompt), max_tokens=16,
                                                   stream=True, **params):
            if chunk["choices"][0]["delta"].get("content"):
                return (time.perf_counter() - start) * 1000
        return float("nan")

    for prompt in PROMPTS:
        ttft_d.append(worker.submit(first_token, prompt, time.perf_counter()).result())
        start = time.perf_counter()
        got = False
        for chunk in app.chat.completions.create(
                model=MODEL, messages=_messages(prompt), max_tokens=16, stream=True,
                extra_headers={"Authorization": f"Bearer {real.token()}"}, **params):
            if not got and chunk.choices and chunk.choices[0].delta.content:
                ttft_m.append((time.perf_counter() - start) * 1000)
                got = True
    rows.append(("time to first token p50", f"{statistics.median(ttft_d):.1f} ms",
                 f"{statistics.median(ttft_m):.1f} ms",
                 f"+{statistics.median(ttft_m) - statistics.median(ttft_d):.1f} ms"))

    # 4. throughput with concurrent clients (each sends two 64-token requests)
    for clients in (1, 4, 16):
        results = {}
        for name, call in (("direct", baseline), ("medclave", confidential)):
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                tokens = sum(pool.map(lambda i, c=call: c(PROMPTS[i % 4], TOKENS),
                                      range(2 * clients)))
            results[name] = tokens / (time.perf_counter() - start)
        rows.append((f"throughput, {clients} concurrent clients (tok/s)",
                     f"{results['direct']:.1f}", f"{results['medclave']:.1f}",
                     f"{results['medclave'] / results['direct']:.3f}"))
    app.close()
    fast.close()

    print(f"SmolLM2-135M-Instruct Q4_1, llama.cpp {threads} threads, {os.cpu_count()} CPUs; "
          "openai client, proxy and enclave (sim) each in its own process on 127.0.0.1; "
          "greedy, seed 7")
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'direct':>12}  {'medclave':>12}  ratio / delta")
    for name, d, m, note in rows:
        print(f"{name:<{width}}  {d:>12}  {m:>12}  {note}")


if __name__ == "__main__":
    main()
