"""Fixtures: one embedder per session, and the five Synthea bundles ingested once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.records.embed import Embedder
from medclave.records.service import RecordsService
from medclave.records.store import MemoryRecordStore, RecordStore

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TENANT = "st-marys"
KEY = bytes(range(32))
DATA = Path(__file__).parent / "data"


def now() -> datetime:
    return datetime.now(UTC)


def bundles(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def make_service(embedder: Embedder, store: RecordStore | None = None,
                 key: bytes = KEY) -> RecordsService:
    def authorizer(sink: Any) -> Authorizer:
        from medclave.auth.breakglass import BreakGlass
        return Authorizer(sink=sink, clock=now, break_glass=BreakGlass())

    return RecordsService(store or MemoryRecordStore(), embedder, lambda tenant: key,
                          authorizer_factory=authorizer, clock=now)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="session")
def synthea(fhir_bundles: Path) -> list[dict[str, Any]]:
    return bundles(fhir_bundles)


@pytest.fixture(scope="session")
def ingested(embedder: Embedder, synthea: list[dict[str, Any]]) -> Iterator[RecordsService]:
    service = make_service(embedder)
    for bundle in synthea:
        service.ingest(TENANT, bundle)
    yield service


def questions() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / "questions.json").read_text())
    return doc


__all__ = ["DecisionRecord"]
