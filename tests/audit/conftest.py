"""Audit test fixtures: a fresh log key and a fresh witness key per test."""

from __future__ import annotations

import pytest

from medclave.audit.note import ALG_COSIGNATURE_V1, NoteSigner
from tests.audit._builders import ORIGIN


@pytest.fixture
def log_signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def witness_signer() -> NoteSigner:
    return NoteSigner.generate("witness.example/w1", ALG_COSIGNATURE_V1)
