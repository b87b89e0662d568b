"""Fixtures: a dev IdP, a real enclave (llama.cpp, loaded once per session) behind a recording
relay, and the proxy in front of it; every server on 127.0.0.1 and stopped after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medclave.background import BackgroundServer
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from tests.e2e.helpers import Enclave, Idp, Relay, make_idp, sim_policy, start_enclave


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def idp(folder: Path) -> Idp:
    return make_idp(folder)


@pytest.fixture(scope="module")
def llama_enclave(folder: Path, idp: Idp) -> Iterator[Enclave]:
    enclave = start_enclave(folder / "enclave", idp)
    yield enclave
    enclave.stop()


@pytest.fixture
def relay(llama_enclave: Enclave) -> Iterator[Relay]:
    with Relay(llama_enclave.url) as r:
        yield r


@pytest.fixture
def proxy(relay: Relay, llama_enclave: Enclave) -> Iterator[str]:
    """The hospital's proxy, talking to the enclave through the recording relay."""
    session = EnclaveSession(relay.url, sim_policy(), sim_roots=frozenset({llama_enclave.sim_root}))
    server = BackgroundServer(create_proxy_app(session), name="test-proxy").start()
    yield server.url
    server.stop()
    session.close()
