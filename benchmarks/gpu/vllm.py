"""vLLM on an NVIDIA GPU with and without Medclave in front: tokens/s, time to first token, and
their ratios, with the card recorded.

On a machine with an NVIDIA GPU (``nvidia-smi`` answers) and vLLM installed, this starts vLLM's
OpenAI-compatible server on 127.0.0.1 (``python -m vllm.entrypoints.openai.api_server``) over a
local model, then measures the same streamed requests asked of vLLM directly and through
Medclave (openai client -> proxy -> enclave with ``engine = "openai-compatible"`` -> vLLM),
in alternating rounds (benchmarks/_remote.py). The enclave hashes the model it is given
(file: SHA-256; folder: the manifest digest of medclave.enclave.model) and checks that vLLM
serves exactly it (its ``root``), as in production. The enclave runs on ``sim`` here: the
figure is Medclave's software path; on an H100 in CC mode inside a CVM the GPU's own
confidential-computing cost (bounce buffers, encrypted PCIe) is in both sides alike, so the
ratio stays Medclave's, and ``nvidia-smi conf-compute -f`` is recorded to say which it was.

Without a GPU, without vLLM, or without a model it prints why and returns (exit status 0):
nothing is downloaded, ever (HF_HUB_OFFLINE=1).

Settings (environment):
- MEDCLAVE_BENCH_VLLM_MODEL: a local model file (GGUF) or folder (safetensors); default: the
  bundled SmolLM2-135M GGUF (vLLM's GGUF support is experimental; a folder is the usual case).
- MEDCLAVE_BENCH_VLLM_TOKENIZER: a local tokenizer folder, for a GGUF model (optional).
- MEDCLAVE_BENCH_VLLM_ARGS: more vLLM arguments, space-separated (e.g. ``--max-model-len 4096``).
- MEDCLAVE_BENCH_VLLM_REQUESTS (default 8) requests a round of MEDCLAVE_BENCH_VLLM_TOKENS
  (default 128) tokens; MEDCLAVE_BENCH_ROUNDS rounds (default 5).
- MEDCLAVE_BENCH_GPU_OUT: the JSON result (default ``vllm-gpu-result.json`` in the current
  folder): the card(s), driver, CC mode, vLLM's version, the model and its digest, medians and
  per-round values of both sides and the median ratios.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import Report, env_int, rounds
from benchmarks._remote import add_rows, measure, summary
from benchmarks._stack import quiet, start_stack

SERVED_NAME = "medclave-bench-model"
START_TIMEOUT = 900.0  # a large model loads (and compiles its graphs) for minutes


def skip(reason: str) -> None:
    print(f"SKIPPED benchmarks.gpu.vllm: {reason}", flush=True)


def gpu_cards() -> list[dict[str, str]] | None:
    """The cards ``nvidia-smi`` reports (name, driver, memory), or None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    cards = [dict(zip(("name", "driver_version", "memory_total"),
                      (part.strip() for part in line.split(",")), strict=False))
             for line in out.splitlines() if line.strip()]
    return cards or None


def cc_mode() -> str:
    """``nvidia-smi conf-compute -f`` (e.g. "CC status: ON"), or why it is unknown."""
    try:
        out = subprocess.run(["nvidia-smi", "conf-compute", "-f"], capture_output=True,
                             text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    return (out.stdout.strip() or out.stderr.strip() or "unknown")[:200]


def _model() -> tuple[Path, str | None]:
    given = os.environ.get("MEDCLAVE_BENCH_VLLM_MODEL")
    if given:
        return Path(given), os.environ.get("MEDCLAVE_BENCH_VLLM_TOKENIZER")
    from medclave.enclave.model import default_model_path

    return default_model_path(), os.environ.get("MEDCLAVE_BENCH_VLLM_TOKENIZER")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_vllm(model: Path, tokenizer: str | None, log: Path) -> tuple[subprocess.Popen[bytes],
                                                                      str]:
    import httpx

    port = _free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--seed", "0"]
    if tokenizer:
        args += ["--tokenizer", tokenizer]
    args += os.environ.get("MEDCLAVE_BENCH_VLLM_ARGS", "").split()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    process = subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(trust_env=False, timeout=5.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"vLLM exited ({process.returncode}):\n{tail}")
            try:
                if http.get(f"{url}/v1/models").status_code == 200:
                    return process, url
            except httpx.TransportError:
                pass
            time.sleep(1.0)
    process.kill()
    tail = log.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"vLLM did not start in {START_TIMEOUT:.0f} s:\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=60)


def main() -> None:
    cards = gpu_cards()
    if cards is None:
        skip("no NVIDIA GPU (nvidia-smi is missing or reports no card)")
        return
    if importlib.util.find_spec("vllm") is None:
        skip("vLLM is not installed (pip install vllm, on the GPU machine)")
        return
    model, tokenizer = _model()
    if not model.exists():
        skip(f"the model {model} does not exist (set MEDCLAVE_BENCH_VLLM_MODEL to a local "
             "file or folder; nothing is downloaded)")
        return
    import vllm

    from medclave.enclave.model import model_digest

    quiet()
    requests = env_int("MEDCLAVE_BENCH_VLLM_REQUESTS", 8)
    tokens = env_int("MEDCLAVE_BENCH_VLLM_TOKENS", 128)
    digest = model_digest(model)
    out = Path(os.environ.get("MEDCLAVE_BENCH_GPU_OUT", "vllm-gpu-result.json"))
    with tempfile.TemporaryDirectory(prefix="medclave-gpu-bench-") as folder:
        log = Path(folder) / "vllm.log"
        process, url = start_vllm(model, tokenizer, log)
        try:
            stack = start_stack(Path(folder) / "stack", model_digest=digest, settings={
                "engine": "openai-compatible", "engine_url": url, "model_id": SERVED_NAME,
                "model_path": model, "model_sha256": digest})
            try:
                figures = measure(url, SERVED_NAME, stack, requests=requests, tokens=tokens)
            finally:
                stack.stop()
        finally:
            _stop(process)
    card = ", ".join(c.get("name", "?") for c in cards)
    report = Report("gpu.vllm", f"vLLM {vllm.__version__} on {card} ({cc_mode()}), model "
                    f"{model.name}; openai client -> proxy -> enclave (sim, engine "
                    "openai-compatible) -> vLLM, vs openai client -> vLLM; streamed, greedy")
    add_rows(report, figures, requests=requests, tokens=tokens)
    report.emit()
    result = {
        "benchmark": "gpu.vllm", "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpus": cards, "cc_mode": cc_mode(), "vllm_version": vllm.__version__,
        "model": {"name": model.name, "digest": digest}, "requests_per_round": requests,
        "max_tokens": tokens, "configured_rounds": rounds(), **summary(figures),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"result written to {out}", flush=True)


if __name__ == "__main__":
    main()
