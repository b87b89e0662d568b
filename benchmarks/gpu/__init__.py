"""Benchmarks that need an NVIDIA GPU (and vLLM); each skips cleanly, with a message, without.

``python -m benchmarks gpu`` (or ``python -m benchmarks.gpu.vllm``) runs
:mod:`benchmarks.gpu.vllm`.
"""

from __future__ import annotations


def main() -> None:
    from benchmarks.gpu.vllm import main as run

    run()
