"""What Medclave adds in front of an OpenAI-compatible engine server (llama_cpp.server on the
CPU, vLLM on a GPU): the same streamed requests asked of the server directly and through
Medclave, in alternating rounds (benchmarks._common).

Direct: the official ``openai`` client -> the engine server. Medclave: the same client ->
proxy (attests, OHTTP) -> enclave (sim; decapsulates, authorizes, audits) -> the same server
over loopback, each in its own process (benchmarks/_stack.py). Both sides stream, greedy, the
same prompts and ``max_tokens``; a round is R requests one after another.

Per round and side: tokens/s (content chunks received over the round's wall time: one chunk is
one token on both servers) and the median time to first token (from the request's start to
its first content chunk).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks._common import Report, interleave
from benchmarks._stack import PARAMS, PROMPTS, Stack, messages


@dataclass(frozen=True)
class Figures:
    """Per-round values of each side, in round order."""

    direct_tps: tuple[float, ...]
    medclave_tps: tuple[float, ...]
    direct_ttft_ms: tuple[float, ...]
    medclave_ttft_ms: tuple[float, ...]


def measure(server_url: str, model: str, stack: Stack, *, requests: int, tokens: int,
            n_rounds: int | None = None) -> Figures:
    import httpx
    import openai

    # trust_env=False: the benchmark talks to 127.0.0.1 only, whatever proxy the shell sets.
    direct = openai.OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0,
                           timeout=600, http_client=httpx.Client(trust_env=False, timeout=600))
    medclave = stack.client(openai, timeout=600)
    ttft: dict[str, list[float]] = {"direct": [], "medclave": []}

    def one(app: Any, headers: dict[str, str], prompt: str) -> tuple[float, int]:
        start = time.perf_counter()
        first, chunks = float("nan"), 0
        stream = app.chat.completions.create(model=model, messages=messages(prompt),
                                             max_tokens=tokens, stream=True,
                                             extra_headers=headers, **PARAMS)
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks += 1
                    if chunks == 1:
                        first = time.perf_counter() - start
        finally:
            stream.close()
        return first, chunks

    def side(name: str) -> float:
        app = direct if name == "direct" else medclave
        made, firsts, start = 0, [], time.perf_counter()
        for i in range(requests):
            headers = stack.auth() if name == "medclave" else {}
            first, chunks = one(app, headers, PROMPTS[i % len(PROMPTS)])
            made += chunks
            firsts.append(first * 1000)
        ttft[name].append(statistics.median(firsts))
        return made / (time.perf_counter() - start)

    one(direct, {}, PROMPTS[0])  # warm both paths (model caches, the proxy's attestation)
    one(medclave, stack.auth(), PROMPTS[0])
    got = interleave({"direct": lambda: side("direct"), "medclave": lambda: side("medclave")},
                     n_rounds)
    direct.close()
    medclave.close()
    return Figures(got["direct"], got["medclave"], tuple(ttft["direct"]),
                   tuple(ttft["medclave"]))


def add_rows(report: Report, figures: Figures, *, requests: int, tokens: int) -> None:
    report.baseline(f"tokens/s, {tokens}-token streamed answers, direct", figures.direct_tps,
                    "tok/s", f"{requests} requests a round, one at a time")
    report.row(f"tokens/s, {tokens}-token streamed answers, medclave", figures.medclave_tps,
               "tok/s", baseline=figures.direct_tps)
    report.baseline("time to first token p50, direct", figures.direct_ttft_ms, "ms")
    report.row("time to first token p50, medclave", figures.medclave_ttft_ms, "ms",
               baseline=figures.direct_ttft_ms)
    report.row("  difference", [m - d for m, d in zip(figures.medclave_ttft_ms,
                                                      figures.direct_ttft_ms, strict=True)],
               "ms", note="medclave - direct, each round")


def summary(figures: Figures) -> dict[str, Any]:
    """Medians and median per-round ratios, for a JSON result."""
    def ratio(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    return {
        "rounds": len(figures.direct_tps),
        "tokens_per_s": {"direct": statistics.median(figures.direct_tps),
                         "medclave": statistics.median(figures.medclave_tps),
                         "ratio": ratio(figures.medclave_tps, figures.direct_tps),
                         "per_round": {"direct": figures.direct_tps,
                                       "medclave": figures.medclave_tps}},
        "ttft_ms": {"direct": statistics.median(figures.direct_ttft_ms),
                    "medclave": statistics.median(figures.medclave_ttft_ms),
                    "ratio": ratio(figures.medclave_ttft_ms, figures.direct_ttft_ms),
                    "per_round": {"direct": figures.direct_ttft_ms,
                                  "medclave": figures.medclave_ttft_ms}},
    }
