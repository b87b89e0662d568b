"""Shared pieces for the inference tests: a spy engine, a recording relay, a dev IdP, policies,
and enclaves served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from medclave.attestation.policy import AppraisalPolicy
from medclave.audit import (
    AuditEntry,
    AuditLog,
    generate_commitment_key,
    parse_commitment_key,
    parse_entry,
)
from medclave.auth.issuer import TokenIssuer, load_or_create_signing_key
from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.engines.base import (
    ChatMessage,
    Completion,
    Delta,
    Generation,
    GenerationCancelled,
    SamplingParams,
    current_generation,
    generation_scope,
    run_streaming,
)
from medclave.enclave.engines.scheduler import EngineCounters, FairScheduler
from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.model import DEFAULT_MODEL_SHA256, default_model_path
from medclave.enclave.settings import EnclaveSettings

MEASUREMENT = hashlib.sha384(b"medclave test enclave build").hexdigest()
TENANT = "st-marys"
ISSUER = "https://idp.test.medclave.invalid"
FAKE_ANSWER = "Zebra-quartz answer seventeen"


def now() -> datetime:
    return datetime.now(UTC)


class FakeEngine:
    """A deterministic engine that records whether it was reached (a spy)."""

    name = "fake"
    build_id = "fake-engine/1"

    def __init__(self, answer: str = FAKE_ANSWER) -> None:
        self.answer = answer
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _called(self, kind: str) -> None:
        with self._lock:
            self.calls.append(kind)

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        self._called("chat")
        return Completion(self.answer, "stop", 7, len(self.answer.split()))

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        self._called("complete")
        return Completion(self.answer, "stop", 3, len(self.answer.split()))

    def _stream(self) -> Iterator[Delta]:
        words = self.answer.split(" ")
        for i, word in enumerate(words):
            yield Delta(word if i == 0 else " " + word)
        yield Delta("", "stop", 7, len(words))

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        self._called("chat_stream")
        return self._stream()

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        self._called("complete_stream")
        return self._stream()

    def close(self) -> None:
        pass


class SlowEngine(FakeEngine):
    """An engine the test paces, so tests wait on counters and events rather than on time.

    A whole answer (``chat``/``complete``) waits for :attr:`opened`; a streamed answer emits one
    word per :meth:`release` d token, through :func:`run_streaming` as llama.cpp does, and stops
    when the consumer has gone (``emit`` returns False), noting how many words it emitted.
    :attr:`busy` counts answers inside the engine now.
    """

    name = "slow"
    build_id = "slow-engine/1"

    def __init__(self, words: int = 40) -> None:
        super().__init__(" ".join(f"w{i}" for i in range(words)))
        self.words = self.answer.split(" ")
        self.opened = threading.Event()
        self.stopped = threading.Event()  # a stream's producer returned (finished or stopped)
        self.emitted: list[int] = []  # per finished producer: how many words it emitted
        self._tokens = threading.Semaphore(0)
        self._busy = threading.Condition()
        self.busy = 0

    def release(self, tokens: int) -> None:
        for _ in range(tokens):
            self._tokens.release()

    def wait_busy(self, count: int, timeout: float = 30.0) -> bool:
        with self._busy:
            return self._busy.wait_for(lambda: self.busy >= count, timeout)

    def _enter(self, step: int) -> None:
        with self._busy:
            self.busy += step
            self._busy.notify_all()

    def _whole(self, kind: str) -> Completion:
        self._called(kind)
        self._enter(1)
        try:
            if not self.opened.wait(60):
                raise RuntimeError("the test never opened the engine")
            return Completion(self.answer, "stop", 7, len(self.words))
        finally:
            self._enter(-1)

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return self._whole("chat")

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        return self._whole("complete")

    def _paced(self) -> Iterator[Delta]:
        def produce(emit: Callable[[Delta], bool]) -> None:
            self._enter(1)
            sent = 0
            try:
                for i, word in enumerate(self.words):
                    if not self._tokens.acquire(timeout=60):
                        raise RuntimeError("the test never released the next token")
                    if not emit(Delta(word if i == 0 else " " + word)):
                        return
                    sent += 1
                emit(Delta("", "stop", 7, sent))
            finally:
                self.emitted.append(sent)
                self._enter(-1)
                self.stopped.set()
        return run_streaming(produce)

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        self._called("chat_stream")
        return self._paced()

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        self._called("complete_stream")
        return self._paced()


class TurnEngine(FakeEngine):
    """An engine that takes turns as llama.cpp does (the same :class:`FairScheduler`, one
    generation at a time) and that the test paces: each generation, whole or streamed, waits
    at each of its words for a token the test :meth:`release` s. Like llama.cpp it notices at
    its next token that its client has left, and stops (a whole answer then ends early).
    """

    name = "turns"
    build_id = "turn-engine/1"

    def __init__(self, words: int = 40, *, max_queued: int = 8, retry_after: int = 1) -> None:
        super().__init__(" ".join(f"w{i}" for i in range(words)))
        self.words = self.answer.split(" ")
        self.scheduler = FairScheduler(parallel=1, max_queued=max_queued,
                                       retry_after=retry_after, name="test-turns")
        self._tokens = threading.Semaphore(0)
        self.free = threading.Event()  # set: tokens need no release

    def release(self, tokens: int) -> None:
        for _ in range(tokens):
            self._tokens.release()

    def counters(self) -> EngineCounters:
        return self.scheduler.counters()

    def wait_for(self, check: Callable[[EngineCounters], bool], timeout: float = 60.0
                 ) -> EngineCounters:
        """The counters once ``check`` holds (polled; ``timeout`` only bounds a failing test)."""
        deadline = time.monotonic() + timeout
        while not check(counters := self.counters()):
            assert time.monotonic() < deadline, f"counters never got there: {counters}"
            time.sleep(0.01)
        return counters

    def _next_token(self, generation: Generation) -> bool:
        """Wait for the test's token; False once the client has left (at the next token)."""
        while not self.free.is_set() and not self._tokens.acquire(timeout=0.01):
            if not generation.wanted():
                return False
        return generation.token()

    def _whole(self, kind: str) -> Completion:
        self._called(kind)
        generation = current_generation() or Generation("", "")

        def work() -> Completion:
            sent = self._take(generation)
            return Completion(" ".join(sent), "stop" if len(sent) == len(self.words)
                              else "length", 7, len(sent))
        try:
            return self.scheduler.submit(work, generation).result()
        except CancelledError:
            raise GenerationCancelled from None

    def _take(self, generation: Generation) -> list[str]:
        sent: list[str] = []
        for word in self.words:
            if not self._next_token(generation):
                break
            sent.append(word)
        return sent

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return self._whole("chat")

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        return self._whole("complete")

    def _paced(self) -> Iterator[Delta]:
        generation = current_generation() or Generation("", "")

        def produce(emit: Callable[[Delta], bool]) -> None:
            for i, word in enumerate(self.words):
                if not self._next_token(generation):
                    return
                if not emit(Delta(word if i == 0 else " " + word)):
                    return
            emit(Delta("", "stop", 7, len(self.words)))
        with generation_scope(generation):
            return run_streaming(produce, submit=lambda run: self.scheduler.submit(run,
                                                                                    generation))

    def chat_stream(self, messages: Sequence[ChatMessage], params: SamplingParams
                    ) -> Iterator[Delta]:
        self._called("chat_stream")
        return self._paced()

    def complete_stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        self._called("complete_stream")
        return self._paced()

    def close(self) -> None:
        self.free.set()  # whatever a failing test left waiting comes out
        self.scheduler.close()


@lru_cache(maxsize=1)
def llama_engine() -> Any:
    """The real llama.cpp engine over the bundled model, loaded once per test process."""
    from medclave.enclave.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(str(default_model_path()), n_ctx=1024, n_threads=2, seed=0)


class _Shared:
    """Hands the session's llama engine to boot without letting an enclave close it."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.name = engine.name
        self.build_id = engine.build_id

    def __getattr__(self, item: str) -> Any:
        return getattr(self._engine, item)

    def close(self) -> None:
        pass


@dataclass
class Idp:
    issuer: TokenIssuer
    jwks: Path

    def token(self, *, roles: Sequence[str] = ("clinician",), tenant: str = TENANT,
              sub: str = "dr-alice") -> str:
        return self.issuer.issue(sub=sub, tenant=tenant, roles=list(roles), now=now())


def make_idp(folder: Path) -> Idp:
    issuer = TokenIssuer(ISSUER, load_or_create_signing_key(folder / "idp"))
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    return Idp(issuer, jwks)


def sim_policy(*, measurement: str = MEASUREMENT, model_digest: str = DEFAULT_MODEL_SHA256,
               platforms: Sequence[str] = ("sim",)) -> AppraisalPolicy:
    return AppraisalPolicy.model_validate({
        "name": "test-hospital", "platforms": list(platforms), "model_digests": [model_digest],
        "platform": {"sim": {"reference_values": {"measurement": [measurement]}}},
    })


@dataclass
class Enclave:
    booted: Booted
    server: BackgroundServer
    engine: Any
    settings: EnclaveSettings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def sim_root(self) -> str:
        root = self.booted.platform.sim_root
        assert root is not None
        return root

    def stop(self) -> None:
        self.server.stop()
        self.booted.close()


def write_commitment_key(path: Path) -> Path:
    """A tenant commitment key file (mode 0600, as the enclave requires), made once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(generate_commitment_key())
    return path


# --- the enclave's stores: SQLite files (the default) or PostgreSQL ----------------------------
# MEDCLAVE_E2E_STORE=postgresql puts every enclave these helpers start on PostgreSQL: a database
# of its own per enclave folder (a reboot of the same folder finds its rows again), on the
# session's server (tests/conftest.py's pg_server, registered by the autouse fixture there).
E2E_STORE = os.environ.get("MEDCLAVE_E2E_STORE", "sqlite")
PG_SERVER: list[str] = []
_DATABASES: dict[Path, str] = {}


def enclave_database(folder: Path) -> str:
    """The PostgreSQL URL of ``folder``'s enclave, created empty on first use."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    key = folder.resolve()
    if key not in _DATABASES:
        assert PG_SERVER, "MEDCLAVE_E2E_STORE=postgresql needs the pg_server fixture"
        name = "e2e_" + uuid.uuid4().hex[:16]
        with psycopg.connect(PG_SERVER[0], autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        _DATABASES[key] = urlunsplit(urlsplit(PG_SERVER[0])._replace(path="/" + name))
    return _DATABASES[key]


def start_enclave(folder: Path, idp: Idp | None, *, engine: Any = None,
                  measurement: str = MEASUREMENT, configured_engine: str | None = None,
                  **overrides: Any) -> Enclave:
    """An enclave on sim, served on 127.0.0.1; ``engine`` None: the session's llama.cpp.
    ``configured_engine``: the ``engine`` setting instead, opened by boot as in production."""
    the_engine = (None if configured_engine else
                  engine if engine is not None else _Shared(llama_engine()))
    if configured_engine:
        overrides["engine"] = configured_engine
    base: dict[str, Any] = {"data_dir": folder, "platform": "sim", "sim_measurement": measurement,
                            "audit_store": "memory",
                            "commitment_key_file": write_commitment_key(folder / "tenant.key")}
    if E2E_STORE == "postgresql":
        # Every store on the database, the audit log included (its e2e default is memory).
        base.update(store=enclave_database(folder), audit_store="sqlite")
    if idp is None:
        base["insecure_no_auth"] = True
    else:
        base.update(auth_issuer=ISSUER, auth_jwks_file=idp.jwks, auth_tenants=(TENANT,))
    base.update(overrides)
    settings = EnclaveSettings(**base)
    if the_engine is None:
        booted = boot(settings)
        the_engine = booted.service.engine
    else:
        booted = boot(settings, engine_factory=lambda path, s: the_engine)
    server = BackgroundServer(create_app(booted.service, settings)).start()
    return Enclave(booted, server, the_engine, settings)


def tenant_key(enclave: Enclave) -> bytes:
    path = enclave.settings.commitment_key_file
    assert path is not None
    return parse_commitment_key(path.read_bytes())


def proxy_to(enclave: Enclave) -> tuple[BackgroundServer, EnclaveSession]:
    """The hospital's proxy straight to the enclave (the recording relay buffers whole answers,
    so it would read the stream to its end whatever the client does)."""
    session = EnclaveSession(enclave.url, sim_policy(), sim_roots=frozenset({enclave.sim_root}))
    return BackgroundServer(create_proxy_app(session), name="test-proxy").start(), session


def audit_log(enclave: Enclave) -> AuditLog:
    sink = enclave.booted.service.audit
    assert isinstance(sink, AuditLogSink)
    return sink.audit_log


def wait_for_entry(enclave: Enclave, index: int, timeout: float = 60.0) -> AuditEntry:
    """Entry ``index`` of the enclave's log once it is appended (polled; ``timeout`` only bounds
    a failing test)."""
    log = audit_log(enclave)
    deadline = time.monotonic() + timeout
    while log.size <= index:
        assert time.monotonic() < deadline, f"no audit entry {index} after {timeout} s"
        time.sleep(0.02)
    return parse_entry(log.entry(index))


# --- the operator's network: a relay that records (and may alter) every byte -----------------


@dataclass
class Exchange:
    method: str
    path: str
    request_headers: list[tuple[str, str]]
    request_body: bytes
    status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""

    def raw(self) -> bytes:
        lines = [f"{self.method} {self.path}"] + [f"{k}: {v}" for k, v in self.request_headers]
        lines += [str(self.status)] + [f"{k}: {v}" for k, v in self.response_headers]
        return "\n".join(lines).encode() + self.request_body + self.response_body


Tamper = Callable[[Exchange, bytes], bytes]


class Relay:
    """A forwarding HTTP server between client and enclave, on 127.0.0.1.

    ``on_request(exchange, body)`` and ``on_response(exchange, body)`` may rewrite bodies (an
    active man in the middle); ``exchanges`` holds every byte that crossed, as it crossed.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.on_request: Tamper | None = None
        self.on_response: Tamper | None = None
        self._http = httpx.Client(timeout=120.0)
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def forward(path: str, request: Request) -> Response:
            body = await request.body()
            query = request.url.query
            target = f"/{path}" + (f"?{query}" if query else "")
            headers = [(k, v) for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length")]
            exchange = Exchange(request.method, target, headers, body)
            if self.on_request is not None:
                body = self.on_request(exchange, body)
            upstream = self._http.request(request.method, self.upstream + target,
                                          content=body, headers=dict(headers))
            content = upstream.content
            if self.on_response is not None:
                content = self.on_response(exchange, content)
            exchange.status = upstream.status_code
            exchange.response_headers = list(upstream.headers.items())
            exchange.response_body = content
            self.exchanges.append(exchange)
            keep = {k: v for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "cache-control")}
            return Response(content, status_code=upstream.status_code, headers=keep)

        self.server = BackgroundServer(app, name="test-relay")

    @property
    def url(self) -> str:
        return self.server.url

    def recording(self) -> bytes:
        return b"\n".join(e.raw() for e in self.exchanges)

    def posts(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST"]

    def attestations(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.path.startswith("/v1/attestation")]

    def __enter__(self) -> Relay:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self._http.close()
