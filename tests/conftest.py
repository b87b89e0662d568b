"""Shared fixtures: the real evidence under MEDCLAVE_VECTORS, read in place, never copied."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

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
