"""The whole confidential path against llama-cpp-python called directly, one request at a time.

Sides and baseline: benchmarks/_stack.py (the official ``openai`` client -> proxy -> enclave on
sim, each in its own process on 127.0.0.1, vs ``llama_cpp.Llama`` in-process; same GGUF,
threads and greedy parameters).

Rows, all measured in the same alternating rounds (benchmarks._common):
* tokens/s for 64-token answers, sequential (goal: ratio >= 0.95);
* added latency per request, p50 (goal: p50 <= 5 ms): the confidential path with an instant
  engine (everything but inference), so the engine's own jitter does not hide it;
* as a cross-check, 1-token requests with the real engine on both sides, and their difference.
Concurrency (1/4/16 clients), time to first token and cancellation: benchmarks/openai_proxy.py.

Per round: MEDCLAVE_BENCH_INFER_ANSWERS answers of MEDCLAVE_BENCH_INFER_TOKENS tokens a side
(default 4 of 64), MEDCLAVE_BENCH_INFER_LATENCY_N instant-engine requests (default 40),
MEDCLAVE_BENCH_INFER_SHORT_N 1-token requests a side (default 4). ``MEDCLAVE_BENCH_THREADS``:
llama.cpp threads (default 2).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import Goal, Report, env_int, fmt, interleave, percentile
from benchmarks._stack import (
    MODEL,
    PARAMS,
    PROMPTS,
    Direct,
    Stack,
    messages,
    quiet,
    start_stack,
    threads,
)


def main() -> None:
    import openai

    quiet()
    direct = Direct()
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as folder:
        real = start_stack(Path(folder) / "real")
        instant = start_stack(Path(folder) / "instant", instant=True)
        try:
            _run(direct, real, instant, openai)
        finally:
            instant.stop()
            real.stop()
            direct.close()


def _run(direct: Direct, real: Stack, instant: Stack, openai: Any) -> None:
    answers = env_int("MEDCLAVE_BENCH_INFER_ANSWERS", 4)
    tokens = env_int("MEDCLAVE_BENCH_INFER_TOKENS", 64)
    latency_n = env_int("MEDCLAVE_BENCH_INFER_LATENCY_N", 40)
    short_n = env_int("MEDCLAVE_BENCH_INFER_SHORT_N", 4)
    app = real.client(openai, timeout=600)
    fast = instant.client(openai)

    def confidential(prompt: str, max_tokens: int) -> int:
        done = app.chat.completions.create(model=MODEL, messages=messages(prompt),
                                           max_tokens=max_tokens, extra_headers=real.auth(),
                                           **PARAMS)
        return int(done.usage.completion_tokens)

    confidential(PROMPTS[0], 4)  # warm both paths (attestation, caches)
    direct.chat(PROMPTS[0], 4)
    instant_ms: list[float] = []

    def tokens_per_s(call: Any) -> float:
        made, start = 0, time.perf_counter()
        for i in range(answers):
            made += call(PROMPTS[i % len(PROMPTS)], tokens)
        return made / (time.perf_counter() - start)

    def added_latency() -> float:
        samples = []
        for i in range(latency_n):
            start = time.perf_counter()
            fast.chat.completions.create(model=MODEL, messages=messages(PROMPTS[i % 4]),
                                         max_tokens=8, extra_headers=instant.auth())
            samples.append((time.perf_counter() - start) * 1000)
        instant_ms.extend(samples)
        return statistics.median(samples)

    def one_token(call: Any) -> float:
        samples = []
        for i in range(short_n):
            start = time.perf_counter()
            call(PROMPTS[i % len(PROMPTS)], 1)
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    got = interleave({
        "direct tok/s": lambda: tokens_per_s(direct.chat),
        "medclave tok/s": lambda: tokens_per_s(confidential),
        "instant": added_latency,
        "direct 1": lambda: one_token(direct.chat),
        "medclave 1": lambda: one_token(confidential),
    })
    app.close()
    fast.close()

    report = Report("inference", f"SmolLM2-135M-Instruct Q4_1, llama.cpp {threads()} "
                    f"threads, {os.cpu_count()} CPUs; openai client -> proxy -> enclave (sim), "
                    "each in its own process, vs llama-cpp-python in-process; greedy")
    report.baseline(f"tokens/s, {tokens}-token answers, direct", got["direct tok/s"], "tok/s",
                    f"{answers} answers a round")
    report.row(f"tokens/s, {tokens}-token answers, medclave", got["medclave tok/s"], "tok/s",
               baseline=got["direct tok/s"], goal=Goal(">=", 0.95, on="ratio"))
    report.row("added latency p50 (instant engine)", got["instant"], "ms", goal=Goal("<=", 5.0),
               note=f"p99 {fmt(percentile(instant_ms, 0.99))} ms over all rounds; "
                    f"{latency_n} requests a round")
    report.baseline("1-token request p50, direct", got["direct 1"], "ms")
    report.row("1-token request p50, medclave", got["medclave 1"], "ms",
               baseline=got["direct 1"])
    report.row("  difference", [m - d for m, d in zip(got["medclave 1"], got["direct 1"],
                                                      strict=True)], "ms",
               note="medclave - direct, each round")
    report.emit()


if __name__ == "__main__":
    main()
