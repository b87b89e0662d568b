"""An OpenAI app through the proxy (issue 10): concurrent clients, and what a cancel frees.

Sides and baseline: benchmarks/_stack.py. The confidential side is the official ``openai``
client -> proxy -> enclave (sim) -> llama.cpp with the bundled SmolLM2, each server in its own
process on 127.0.0.1; "direct" is llama-cpp-python in this process on one worker thread, the
strictest baseline (no HTTP at all). Both sides stream (``stream=True``), greedy, same prompts.

Rows, each side alternating with the other in rounds (benchmarks._common):
* at 1, 4 and 16 concurrent clients: requests/s, and time to first token (p50 of the round's
  requests, each timed from its own start, so at 16 clients it includes the queue: llama.cpp
  serves one request at a time on either side). Each round sends max(N, clients) requests of
  T tokens (MEDCLAVE_BENCH_PROXY_REQUESTS, default 8; MEDCLAVE_BENCH_PROXY_TOKENS, default 32).
* cancellation: a long streamed answer (MEDCLAVE_BENCH_CANCEL_TOKENS, default 256) closed by the
  client after its first chunk, then a 3-token request (whole): the time from the close until that
  request is answered, against the same request on an idle engine; and, from counters on the
  enclave's engine (benchmark instrumentation, _stack.EngineCounters), when the abandoned
  generation stopped and how many tokens it made.
"""

from __future__ import annotations

import functools
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._common import Report, env_int, fmt, interleave
from benchmarks._stack import MODEL, PARAMS, PROMPTS, Direct, Stack, messages, quiet, start_stack

LEVELS = (1, 4, 16)
LONG_PROMPT = "Write a long, detailed essay on the history of medicine, from antiquity to today."
SHORT_TOKENS = 3

# (prompt, max_tokens, stop after the first chunk) -> (monotonic time of the first chunk, chunks)
Streamer = Callable[[str, int, bool], tuple[float, int]]


def main() -> None:
    import openai

    quiet()
    direct = Direct()
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as folder:
        stack = start_stack(Path(folder) / "real")
        try:
            _run(direct, stack, openai)
        finally:
            stack.stop()
            direct.close()


def _run(direct: Direct, stack: Stack, openai: Any) -> None:
    requests = env_int("MEDCLAVE_BENCH_PROXY_REQUESTS", 8)
    tokens = env_int("MEDCLAVE_BENCH_PROXY_TOKENS", 32)
    long_tokens = env_int("MEDCLAVE_BENCH_CANCEL_TOKENS", 256)
    app = stack.client(openai, timeout=600)

    def proxied(prompt: str, max_tokens: int, stop_after_first: bool = False
                ) -> tuple[float, int]:
        stream = app.chat.completions.create(model=MODEL, messages=messages(prompt),
                                             max_tokens=max_tokens, stream=True,
                                             extra_headers=stack.auth(), **PARAMS)
        first, count = math.nan, 0
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
                    if count == 1:
                        first = time.monotonic()
                        if stop_after_first:
                            break
        finally:
            stream.close()  # after the first chunk: the app goes away mid-answer
        return first, count

    def direct_stream(prompt: str, max_tokens: int, stop_after_first: bool = False
                      ) -> tuple[float, int]:
        return direct.stream(prompt, max_tokens, stop_after_first=stop_after_first)

    proxied(PROMPTS[0], 4)  # warm both paths (attestation, caches)
    direct_stream(PROMPTS[0], 4)
    report = Report("openai_proxy", "openai client -> proxy -> enclave (sim) vs llama-cpp-python "
                    f"in-process; streamed, greedy, {tokens}-token answers")
    tok_s: dict[str, list[float]] = {}
    for clients in LEVELS:
        _level(report, clients, max(requests, clients), tokens,
               {"direct": direct_stream, "medclave": proxied}, tok_s)
    _cancel(report, direct, stack, app, proxied, long_tokens, tok_s)
    app.close()
    report.emit()


def _level(report: Report, clients: int, total: int, tokens: int,
           sides: dict[str, Streamer], tok_s: dict[str, list[float]]) -> None:
    ttft: dict[str, list[float]] = {name: [] for name in sides}
    failures: dict[str, list[str]] = {name: [] for name in sides}

    def load(name: str) -> float:
        """One round of ``total`` requests from ``clients`` threads: requests/s."""
        call = sides[name]

        def one(i: int) -> tuple[float, int]:
            begun = time.monotonic()
            try:
                first, count = call(PROMPTS[i % len(PROMPTS)], tokens, False)
            except Exception as exc:  # counted and shown: a refused request is no throughput
                failures[name].append(f"{type(exc).__name__}: {str(exc)[:80]}")
                return math.nan, 0
            return (first - begun) * 1000, count

        start = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            done = list(pool.map(one, range(total)))
        elapsed = time.monotonic() - start
        served = [d for d in done if d[1] > 0]
        ttft[name].append(statistics.median([d[0] for d in served]) if served else math.nan)
        tok_s.setdefault(f"{name} {clients}", []).append(sum(d[1] for d in served) / elapsed)
        return len(served) / elapsed

    got = interleave({name: functools.partial(load, name) for name in sides})
    label = f"{clients} client{'s' if clients > 1 else ''}"
    per_round = f"{total} requests a round"
    for name in sides:
        if failures[name]:
            per_round += f"; {name}: {len(failures[name])} failed ({failures[name][0]})"
    report.baseline(f"{label}: requests/s, direct", got["direct"], "req/s",
                    f"{fmt(statistics.median(tok_s[f'direct {clients}']))} tok/s; {per_round}")
    report.row(f"{label}: requests/s, medclave", got["medclave"], "req/s",
               baseline=got["direct"],
               note=f"{fmt(statistics.median(tok_s[f'medclave {clients}']))} tok/s")
    report.baseline(f"{label}: first token p50, direct", ttft["direct"], "ms")
    report.row(f"{label}: first token p50, medclave", ttft["medclave"], "ms",
               baseline=ttft["direct"])


def _cancel(report: Report, direct: Direct, stack: Stack, stack_app: Any, proxied: Streamer,
            long_tokens: int, tok_s: dict[str, list[float]]) -> None:
    def answer(prompt: str, max_tokens: int) -> object:  # whole, not streamed: not counted
        return stack_app.chat.completions.create(model=MODEL, messages=messages(prompt),
                                                 max_tokens=max_tokens,
                                                 extra_headers=stack.auth(), **PARAMS)

    def short(name: str, prompt: str = PROMPTS[0]) -> object:
        if name == "direct":
            return direct.chat(prompt, SHORT_TOKENS)
        return answer(prompt, SHORT_TOKENS)

    streams: dict[str, Streamer] = {
        "direct": lambda p, n, s: direct.stream(p, n, stop_after_first=s),
        "medclave": proxied,
    }
    stopped: list[float] = []  # ms from the close to the engine's end of that generation
    made: list[int] = []  # tokens the abandoned generation produced
    unseen: list[str] = []

    def idle(name: str) -> float:
        # llama.cpp reuses the longest prefix the previous prompt shares with this one: after
        # another prompt, as after the long one, it evaluates the same part of the short one.
        short(name, PROMPTS[1])
        start = time.monotonic()
        short(name)
        return (time.monotonic() - start) * 1000

    def cancelled(name: str) -> float:
        counters = stack.counters if name == "medclave" else None
        before = counters.snapshot()[0] if counters is not None else 0
        closed, _ = streams[name](LONG_PROMPT, long_tokens, True)
        short(name)
        served = (time.monotonic() - closed) * 1000
        if counters is not None:
            # The abandoned stream is the first generation started after ``before``.
            deadline = time.monotonic() + 120  # an engine that overlaps requests may still run
            while True:
                end = counters.end_of(before)
                if end is not None:
                    stopped.append((end[1] - closed) * 1000)
                    made.append(end[0])
                    break
                if counters.snapshot()[0] == before or time.monotonic() > deadline:
                    unseen.append(name)  # the engine ran it some way the counters do not see
                    break
                time.sleep(0.01)
        return served

    got = interleave({
        "direct idle": lambda: idle("direct"),
        "direct cancel": lambda: cancelled("direct"),
        "medclave idle": lambda: idle("medclave"),
        "medclave cancel": lambda: cancelled("medclave"),
    })
    uncancelled = long_tokens / statistics.median(tok_s["direct 1"])
    report.baseline(f"{SHORT_TOKENS}-token request, idle engine, direct", got["direct idle"],
                    "ms")
    report.row(f"{SHORT_TOKENS}-token request, idle engine, medclave", got["medclave idle"],
               "ms", baseline=got["direct idle"])
    report.baseline("cancel -> next request served, direct", got["direct cancel"], "ms",
                    f"stream of up to {long_tokens} tokens closed after its first chunk")
    report.row("cancel -> next request served, medclave", got["medclave cancel"], "ms",
               baseline=got["direct cancel"],
               note=f"uncancelled, the answer would take ~{fmt(uncancelled)} s")
    report.row("  wait the abandoned stream added, medclave",
               [c - i for c, i in zip(got["medclave cancel"], got["medclave idle"], strict=True)],
               "ms", note="cancel -> served minus idle, each round")
    if stopped and not unseen:
        report.row("cancel -> engine stopped, medclave", stopped, "ms",
                   note=f"engine counters; the abandoned stream made {statistics.median(made):.0f}"
                        f" tokens (p50; {min(made)}-{max(made)}) of up to {long_tokens}")
    else:
        report.note("cancel -> engine stopped: not counted (the engine's generations are not "
                    "the ones _stack.EngineCounters wraps on this build)")
