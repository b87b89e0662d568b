"""The scribe's fixtures: one Whisper worker per test session, visits spoken once, and a sim
enclave with speech and the scribe behind the hospital's proxy on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medclave.apps.scribe.route import routes as scribe_routes
from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.app import create_app
from medclave.enclave.boot import Booted, boot
from medclave.enclave.settings import EnclaveSettings
from medclave.enclave.speech import Transcriber, bundled_model
from tests.conftest import REQUIRE
from tests.e2e.helpers import MEASUREMENT, FakeEngine, sim_policy, write_commitment_key
from tests.scribe import visits

# Short visits: the tests run these; the evaluation (benchmarks/scribe.py) runs them all.
SHORT = ("asthma", "uti", "hypertension")


def need_espeak() -> None:
    if visits.espeak() is None:
        if REQUIRE:
            pytest.fail("espeak-ng is required (MEDCLAVE_REQUIRE_VECTORS=1): apt-get install "
                        "espeak-ng")
        pytest.skip("espeak-ng is not installed")


@pytest.fixture(scope="session")
def transcriber() -> Iterator[Transcriber]:
    speech = Transcriber(bundled_model(), threads=2)
    yield speech
    speech.close()


@pytest.fixture(scope="session")
def spoken() -> dict[str, bytes]:
    """The short visits as WAV bytes (espeak-ng), made once per session."""
    need_espeak()
    return {name: visits.synthesize(visits.by_name(name)) for name in SHORT}


@dataclass
class Stack:
    booted: Booted
    enclave: BackgroundServer
    proxy: BackgroundServer
    session: EnclaveSession
    settings: EnclaveSettings
    engine: Any

    @property
    def proxy_url(self) -> str:
        return self.proxy.url

    def tenant_key(self) -> bytes:
        from medclave.audit import parse_commitment_key

        assert self.settings.commitment_key_file is not None
        return parse_commitment_key(self.settings.commitment_key_file.read_bytes())

    def stop(self) -> None:
        self.proxy.stop()
        self.session.close()
        self.enclave.stop()
        self.booted.close()


def start_stack(folder: Path, speech: Transcriber | None, *, engine: Any = None,
                scribe: bool = True, policy: Any = None, timeout: float = 300.0,
                **overrides: Any) -> Stack:
    """A sim enclave (speech and the scribe on), and the proxy to it."""
    the_engine = engine if engine is not None else FakeEngine()
    values: dict[str, Any] = {
        "data_dir": folder / "enclave", "platform": "sim", "sim_measurement": MEASUREMENT,
        "audit_store": "sqlite", "insecure_no_auth": True, "speech": speech is not None,
        "commitment_key_file": write_commitment_key(folder / "tenant.key")}
    values.update(overrides)
    settings = EnclaveSettings(**values)
    booted = boot(settings, engine_factory=lambda path, s: the_engine,
                  routes=(lambda s: dict(scribe_routes(s.model_id))) if scribe else None,
                  speech=speech)
    enclave = BackgroundServer(create_app(booted.service, settings), name="scribe-enclave").start()
    root = booted.platform.sim_root
    assert root is not None
    session = EnclaveSession(enclave.url, policy or sim_policy(), sim_roots=frozenset({root}),
                             timeout=timeout)
    proxy = BackgroundServer(create_proxy_app(session), name="scribe-proxy").start()
    return Stack(booted, enclave, proxy, session, settings, the_engine)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transcriber: Transcriber
          ) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("scribe"), transcriber)
    yield running
    running.stop()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"
