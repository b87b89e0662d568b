"""The inference benchmarks' two sides: the confidential path and llama.cpp direct.

Confidential path: the official ``openai`` client -> the Medclave proxy (attests, pins, OHTTP
encapsulates, verifies the audit receipt) -> the enclave server (decapsulates, checks the token
and Cedar policy, runs llama.cpp, appends a signed audit entry to SQLite, encapsulates) and back;
every hop is real HTTP on 127.0.0.1; proxy and enclave each run in their own process, as they
would on their own machines (``medclave proxy`` and ``medclave enclave serve`` do the same, with
their settings from files); the enclave on sim.

Direct: ``llama_cpp.Llama`` in this process, same GGUF, same context size and threads, on one
worker thread as the enclave's engine runs it (llama.cpp's context is not thread-safe; one thread
also keeps one OpenMP team). No HTTP at all: the ratio is everything Medclave adds, the two
loopback hops and the app's own client included, so it is the strictest baseline available
(a plain OpenAI-compatible server would hide the HTTP cost; llama-cpp-python's own server is not
installed, and one written here would be this project's code measured against itself).

``MEDCLAVE_BENCH_THREADS`` sets llama.cpp threads (default: 2).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._common import env_int

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Explain in detail how beta-blockers lower blood pressure.",
    "Describe the stages of wound healing after surgery.",
    "List the common causes of chest pain and how to tell them apart.",
    "Explain how insulin regulates blood glucose in the body.",
]
PARAMS: dict[str, Any] = {"temperature": 0.0, "seed": 7}  # greedy: both sides, same tokens
N_CTX = 2048


def threads() -> int:
    return env_int("MEDCLAVE_BENCH_THREADS", 2)


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# --- direct ------------------------------------------------------------------------------------


class Direct:
    """llama-cpp-python in-process, every call on one worker thread."""

    def __init__(self) -> None:
        import llama_cpp

        from medclave.enclave.model import default_model_path

        n = threads()
        self.llm: Any = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=N_CTX,
                                   n_threads=n, n_threads_batch=n, seed=0, verbose=False)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-llama")

    def chat(self, prompt: str, max_tokens: int) -> int:
        """A whole answer; its completion tokens."""
        done = self.worker.submit(self.llm.create_chat_completion, messages=messages(prompt),
                                  max_tokens=max_tokens, **PARAMS).result()
        return int(done["usage"]["completion_tokens"])

    def stream(self, prompt: str, max_tokens: int, *, stop_after_first: bool = False
               ) -> tuple[float, int]:
        """A streamed answer, queued behind the worker like any other: (monotonic time of the
        first content chunk, content chunks seen). ``stop_after_first`` closes the stream
        there, as a client that goes away does."""

        def run() -> tuple[float, int]:
            first, count = float("nan"), 0
            chunks = self.llm.create_chat_completion(messages=messages(prompt),
                                                     max_tokens=max_tokens, stream=True,
                                                     **PARAMS)
            try:
                for chunk in chunks:
                    if chunk["choices"][0]["delta"].get("content"):
                        count += 1
                        if count == 1:
                            first = time.monotonic()
                            if stop_after_first:
                                break
            finally:
                chunks.close()
            return first, count

        return self.worker.submit(run).result()

    def close(self) -> None:
        self.worker.submit(self.llm.close).result()
        self.worker.shutdown()


# --- the confidential path -----------------------------------------------------------------------


class EngineCounters:
    """What the enclave's engine did, in memory shared with the enclave's process.

    How many generations started and ended, and for each (by start order, the last
    ``SLOTS``) when it ended (``time.monotonic``, one clock for all processes on Linux) and
    after how many tokens. Read from the engine's own counters, where llama.cpp produces the
    tokens, not where the enclave reads them: a generation nobody reads any more still counts.
    """

    SLOTS = 1024
    _STARTED, _ENDED = 0, 1

    def __init__(self, ctx: Any) -> None:
        self._values = ctx.Array("d", 2 + 2 * self.SLOTS)

    def started(self, total: int) -> None:
        with self._values.get_lock():
            self._values[self._STARTED] = total

    def ended(self, generation: int, tokens: int) -> None:
        slot = 2 + 2 * (generation % self.SLOTS)
        with self._values.get_lock():
            self._values[self._ENDED] += 1
            self._values[slot] = tokens
            self._values[slot + 1] = time.monotonic()

    def snapshot(self) -> tuple[int, int]:
        """(started, ended)."""
        with self._values.get_lock():
            return int(self._values[self._STARTED]), int(self._values[self._ENDED])

    def end_of(self, generation: int) -> tuple[int, float] | None:
        """(tokens, monotonic end time) of the ``generation``-th started (0-based), if ended."""
        slot = 2 + 2 * (generation % self.SLOTS)
        with self._values.get_lock():
            at = self._values[slot + 1]
            return None if at == 0 else (int(self._values[slot]), at)


def _instrument(engine: Any, counters: EngineCounters) -> bool:
    """Mirror the engine's own counters (``LlamaCppEngine.counters()``: generations in start
    order, each with its outcome and tokens) into memory the benchmark process reads. Polled
    every millisecond on a daemon thread of the enclave's process, so an end time is late by
    at most about that. False where the engine keeps no counters."""
    read = getattr(engine, "counters", None)
    if read is None:
        return False

    def mirror() -> None:
        ended: set[int] = set()
        while True:
            now = read()
            first = now.started - len(now.history)  # the history keeps the latest generations
            counters.started(now.started)
            for i, generation in enumerate(now.history):
                number = first + i
                if generation.outcome != "running" and number not in ended:
                    ended.add(number)
                    counters.ended(number, generation.tokens)
            time.sleep(0.001)

    threading.Thread(target=mirror, name="bench-counters", daemon=True).start()
    return True


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


def _settings(folder: str, issuer: str, extra: dict[str, Any] | None = None) -> Any:
    from medclave.audit import generate_commitment_key
    from medclave.enclave.settings import EnclaveSettings

    key_file = Path(folder) / "tenant.key"  # the tenant's commitment key (sim: a 0600 file)
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(generate_commitment_key())
    values: dict[str, Any] = dict(
        data_dir=Path(folder) / "enclave", platform="sim", auth_issuer=issuer,
        auth_jwks_file=Path(folder) / "jwks.json", auth_tenants=("bench",),
        audit_store="sqlite", n_threads=threads(), n_ctx=N_CTX, commitment_key_file=key_file)
    # Concurrency limits, where this build has them, at least the benchmark's 16 clients of one
    # tenant: the throughput figures are about serving them, not about being refused (429).
    for name in ("max_concurrent_inferences", "max_concurrent_per_tenant"):
        if name in EnclaveSettings.model_fields:
            values[name] = 64
    values.update(extra or {})  # e.g. the remote engine: engine, engine_url, engine_build
    return EnclaveSettings(**values)


def _enclave_process(folder: str, issuer: str, instant: bool, counters: EngineCounters | None,
                     out: Any, stop: Any, extra: dict[str, Any] | None = None) -> None:
    """The enclave in its own process, as deployed (it would be another machine)."""
    import logging

    logging.disable(logging.WARNING)
    from medclave.background import BackgroundServer
    from medclave.enclave.app import create_app
    from medclave.enclave.boot import boot, default_engine

    settings = _settings(folder, issuer, extra)
    counted = False

    def engine(path: str, s: Any) -> Any:
        nonlocal counted
        if instant:
            return InstantEngine()
        made = default_engine(path, s)
        counted = counters is not None and _instrument(made, counters)
        return made

    booted = boot(settings, engine_factory=engine)
    server = BackgroundServer(create_app(booted.service, settings)).start()
    out.put((server.url, booted.platform.sim_root, counted))
    stop.wait()
    server.stop()
    booted.close()


def _proxy_process(upstream: str, sim_root: str, out: Any, stop: Any,
                   model_digest: str | None = None) -> None:
    """The hospital's proxy in its own process, as deployed."""
    import logging

    logging.disable(logging.WARNING)
    from medclave.attestation.policy import AppraisalPolicy
    from medclave.attestation.sim import code_measurement
    from medclave.background import BackgroundServer
    from medclave.client.proxy import create_proxy_app
    from medclave.client.session import EnclaveSession
    from medclave.enclave.model import DEFAULT_MODEL_SHA256

    policy = AppraisalPolicy.model_validate({
        "platforms": ["sim"], "model_digests": [model_digest or DEFAULT_MODEL_SHA256],
        "platform": {"sim": {"reference_values": {"measurement": [code_measurement().hex()]}}}})
    session = EnclaveSession(upstream, policy, sim_roots=frozenset({sim_root}))
    server = BackgroundServer(create_proxy_app(session)).start()
    out.put(server.url)
    stop.wait()
    server.stop()
    session.close()


@dataclass
class Stack:
    proxy_url: str
    token: Callable[[], str]
    stop: Callable[[], None]
    counters: EngineCounters | None  # None: instant engine, or the engine could not be counted

    def client(self, openai: Any, **options: Any) -> Any:
        """An ``openai.OpenAI`` client of the proxy; each request carries a fresh token."""
        return openai.OpenAI(base_url=f"{self.proxy_url}/v1", api_key="per-request",
                             max_retries=0, **options)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}


def start_stack(folder: Path, *, instant: bool = False, settings: dict[str, Any] | None = None,
                model_digest: str | None = None) -> Stack:
    """Enclave and proxy processes on 127.0.0.1, with a development IdP in this process.
    ``settings``: enclave settings beside the benchmark's own (the remote engine's);
    ``model_digest``: the model the proxy's policy accepts (default: the bundled one)."""
    from medclave.auth.issuer import TokenIssuer, load_or_create_signing_key

    folder.mkdir(parents=True)
    issuer = TokenIssuer("https://idp.bench.invalid", load_or_create_signing_key(folder / "idp"))
    (folder / "jwks.json").write_text(json.dumps(issuer.jwks()))
    ctx = multiprocessing.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    counters = None if instant else EngineCounters(ctx)
    enclave = ctx.Process(target=_enclave_process, daemon=True,
                          args=(str(folder), issuer.issuer, instant, counters, out, stop,
                                settings))
    enclave.start()
    url, sim_root, counted = out.get(timeout=180)
    proxy = ctx.Process(target=_proxy_process, args=(url, sim_root, out, stop, model_digest),
                        daemon=True)
    proxy.start()
    proxy_url = out.get(timeout=180)

    def token() -> str:
        return issuer.issue(sub="bench", tenant="bench", roles=["clinician"],
                            now=datetime.now(UTC))

    def halt() -> None:
        stop.set()
        for process in (proxy, enclave):
            process.join(timeout=15)
            if process.is_alive():
                process.kill()

    return Stack(proxy_url, token, halt, counters if counted else None)


def quiet() -> None:
    """This process's Medclave logs down to errors: the tables are the output."""
    import logging

    logging.getLogger("medclave").setLevel(logging.ERROR)
