"""Audit test fixtures: a fresh log key and a fresh witness key per test; the stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medclave.audit.note import ALG_COSIGNATURE_V1, NoteSigner
from medclave.audit.store import LogStore, MemoryLogStore
from tests.audit._backends import Backend, backend
from tests.audit._builders import ORIGIN


@pytest.fixture
def log_signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def witness_signer() -> NoteSigner:
    return NoteSigner.generate("witness.example/w1", ALG_COSIGNATURE_V1)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A durable log store to open (and reopen): each test runs on SQLite and on PostgreSQL."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return backend(request.param, tmp_path, url)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStore]:
    """A fresh, open store of each kind."""
    s: LogStore
    if request.param == "memory":
        s = MemoryLogStore()
    else:
        url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
        s = backend(request.param, tmp_path, url).open()
    yield s
    s.close()
