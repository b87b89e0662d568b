"""Medclave in front of llama.cpp's OpenAI-compatible server (the remote engine on the CPU)
against that server asked directly: tokens/s and time to first token, and their ratios.

The engine server is ``python -m llama_cpp.server`` with the bundled SmolLM2 (the stand-in for
vLLM, tests/e2e/engine_server.py); Medclave's enclave runs with ``engine =
"openai-compatible"`` over loopback. Method and rows: benchmarks/_remote.py. On a GPU machine
with vLLM the same comparison is benchmarks/gpu/.

MEDCLAVE_BENCH_REMOTE_REQUESTS requests a round a side (default 4) of
MEDCLAVE_BENCH_REMOTE_TOKENS tokens (default 32); MEDCLAVE_BENCH_THREADS: the server's
llama.cpp threads (default 2).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks._common import Report, env_int
from benchmarks._remote import add_rows, measure
from benchmarks._stack import MODEL, N_CTX, quiet, start_stack, threads


def main() -> None:
    from tests.e2e.engine_server import SERVER_BUILD, LlamaServer

    quiet()
    requests = env_int("MEDCLAVE_BENCH_REMOTE_REQUESTS", 4)
    tokens = env_int("MEDCLAVE_BENCH_REMOTE_TOKENS", 32)
    with tempfile.TemporaryDirectory(prefix="medclave-bench-") as folder, \
            LlamaServer(n_ctx=N_CTX, threads=threads()) as server:
        stack = start_stack(Path(folder) / "remote", settings={
            "engine": "openai-compatible", "engine_url": server.url,
            "engine_build": SERVER_BUILD})
        try:
            figures = measure(server.url, MODEL, stack, requests=requests, tokens=tokens)
        finally:
            stack.stop()
    report = Report("remote_engine", f"SmolLM2-135M-Instruct Q4_1 on llama_cpp.server "
                    f"({threads()} threads, {os.cpu_count()} CPUs); openai client -> proxy -> "
                    "enclave (sim, engine openai-compatible) -> server, vs openai client -> "
                    "server; streamed, greedy")
    add_rows(report, figures, requests=requests, tokens=tokens)
    report.emit()


if __name__ == "__main__":
    main()
