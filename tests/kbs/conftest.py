"""Fixtures for the key broker: an injected clock, brokers over both stores, a live server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medclave.attestation.sim import SimAuthority
from medclave.background import BackgroundServer
from medclave.kbs.app import create_app
from medclave.kbs.factory import build_broker
from medclave.kbs.keywrap import AesGcmKek
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import Decision, KbsStore, MemoryKbsStore


@dataclass
class Clock:
    # Real time by default: a sim authority's certificates start the day before it is created.
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> SimAuthority:
    return SimAuthority.load_or_create(tmp_path_factory.mktemp("sim"))


# Every backend runs the same store suites (issue 17): the in-memory store, SQLite on disk, and
# PostgreSQL (a fresh database per test from tests/conftest.py's `pg_url`).
BACKENDS = ["memory", "sqlite", "postgres"]


def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str = "kbs",
                 **kw: int) -> KbsStore:
    """A new, empty store of ``kind``; a second call with another ``name`` opens another one
    (for PostgreSQL, in the same database: call it once per test)."""
    if kind == "memory":
        return MemoryKbsStore(**kw)
    if kind == "sqlite":
        return SqliteKbsStore(tmp_path / f"{name}.db", **kw)
    from medclave.kbs.postgres_store import PostgresKbsStore

    return PostgresKbsStore(request.getfixturevalue("pg_url"), **kw)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KbsStore]:
    s = open_backend(request.param, request, tmp_path)
    yield s
    s.close()


@dataclass
class Live:
    """A broker served over real HTTP on 127.0.0.1."""

    url: str
    broker: KeyBroker
    decisions: list[Decision]
    settings: KbsSettings

    def token(self, owner: str) -> str:
        return self.broker.issue_owner_token(owner)


def make_settings(tmp_path: Path, *, sim_roots: tuple[str, ...] = (), **kw: object) -> KbsSettings:
    base: dict[str, object] = {"data_dir": tmp_path / "kbs", "store": "memory",
                               "sim_roots": sim_roots, "rate_per_second": 1000.0,
                               "rate_burst": 1000}
    base.update(kw)
    return KbsSettings(**base)  # type: ignore[arg-type]


def serve_broker(settings: KbsSettings, *, store: KbsStore, clock: Clock,
                 trusted_roots: frozenset[str] | None = None) -> tuple[BackgroundServer, Live]:
    seen: list[Decision] = []
    broker = build_broker(settings, store=store, wrapper=AesGcmKek(os.urandom(32)), clock=clock,
                          on_decision=seen.append, trusted_roots=trusted_roots)
    # serving=settings: trusted proxies and read deadlines exactly as `medclave kbs serve` has them.
    server = BackgroundServer(create_app(settings, broker=broker), serving=settings)
    return server, Live("", broker, seen, settings)


@pytest.fixture
def live_factory(tmp_path: Path, clock: Clock) -> Iterator[object]:
    """``live_factory(sim_roots=..., store=...)`` -> a started :class:`Live`; all stopped after."""
    servers: list[BackgroundServer] = []

    def make(*, sim_roots: tuple[str, ...] = (), store: KbsStore | None = None,
             trusted_roots: frozenset[str] | None = None, **kw: object) -> Live:
        settings = make_settings(tmp_path, sim_roots=sim_roots, **kw)
        server, live = serve_broker(settings, store=store or MemoryKbsStore(), clock=clock,
                                    trusted_roots=trusted_roots)
        server.start()
        servers.append(server)
        live.url = server.url
        return live

    yield make
    for s in servers:
        s.stop()
