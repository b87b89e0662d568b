"""The sealed store: the row format against its written definition, and tampering at boot."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medclave.errors import RecordsError
from medclave.records.embed import Embedder
from medclave.records.store import DataKey, SealedRow, SqliteRecordStore
from tests.conftest import flip
from tests.records.conftest import KEY, TENANT, make_service

SECRET = bytes.fromhex("11" * 32)


def _hkdf(label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"medclave-records-v1/{label}".encode()).derive(SECRET)


def test_a_row_sealed_as_documented_opens() -> None:
    # docs/retrieval.md: row id = HMAC-SHA256(row key, reference)[:16 bytes]; AAD = canonical
    # JSON {"chunk","row","tenant","v"}; blob = nonce (12) || AES-256-GCM(ciphertext || tag).
    reference = "Observation/o1"
    row = hmac.new(_hkdf("row-id"), reference.encode(), hashlib.sha256).hexdigest()[:32]
    aad = json.dumps({"chunk": 3, "row": row, "tenant": "t1", "v": 1},
                     separators=(",", ":")).encode()
    nonce = bytes(12)
    payload = {"reference": reference, "text": "x"}
    blob = nonce + AESGCM(_hkdf("aead")).encrypt(nonce, json.dumps(payload).encode(), aad)
    key = DataKey("t1", SECRET)
    assert key.row_id(reference) == row
    assert key.open(SealedRow("t1", row, 3, blob)) == payload
    for moved in (SealedRow("t2", row, 3, blob), SealedRow("t1", row, 4, blob),
                  SealedRow("t1", "0" * 32, 3, blob)):
        with pytest.raises(RecordsError) as err:
            DataKey(moved.tenant, SECRET).open(moved)
        assert err.value.code == "records.store_tampered"


@pytest.fixture(scope="module")
def sealed_store(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder,
                 synthea: list[dict[str, Any]]) -> bytes:
    """A store with part of one bundle ingested, as bytes (built once, copied per test)."""
    path = tmp_path_factory.mktemp("store") / "records.sqlite3"
    service = make_service(embedder, SqliteRecordStore(path))
    bundle = dict(synthea[0])
    bundle["entry"] = synthea[0]["entry"][:30]
    service.ingest(TENANT, bundle)
    service.close()  # the WAL is checkpointed into the main file on close
    return path.read_bytes()


def _ingested(tmp_path: Path, sealed_store: bytes) -> Path:
    path = tmp_path / "records.sqlite3"
    path.write_bytes(sealed_store)
    return path


def _reboot(path: Path, embedder: Embedder, key: bytes = KEY) -> int:
    service = make_service(embedder, SqliteRecordStore(path), key)
    try:
        return service.rebuild()
    finally:
        service.close()


def _flip(db: sqlite3.Connection) -> None:
    """One bit of one ciphertext flipped (past the 12-byte nonce)."""
    row, chunk, blob = db.execute("SELECT row, chunk, blob FROM sealed ORDER BY row, chunk "
                                  "LIMIT 1 OFFSET 3").fetchone()
    db.execute("UPDATE sealed SET blob = ? WHERE row = ? AND chunk = ?",
               (flip(bytes(blob), 20), row, chunk))


def _delete(db: sqlite3.Connection) -> None:
    """A whole chunk row removed: every remaining row still authenticates."""
    row, chunk = db.execute("SELECT row, chunk FROM sealed WHERE chunk = 0 LIMIT 1").fetchone()
    db.execute("DELETE FROM sealed WHERE row = ? AND chunk = ?", (row, chunk))


def _move(db: sqlite3.Connection) -> None:
    """A row moved to another chunk position."""
    row = db.execute("SELECT row FROM sealed WHERE chunk = 0 LIMIT 1").fetchone()[0]
    db.execute("UPDATE sealed SET chunk = 200 WHERE row = ? AND chunk = 0", (row,))


def _edit(path: Path, change: Callable[[sqlite3.Connection], None]) -> None:
    db = sqlite3.connect(path)
    change(db)
    db.commit()
    db.close()


def test_the_store_reopens_at_boot_and_holds_no_plaintext(
        tmp_path: Path, embedder: Embedder, sealed_store: bytes) -> None:
    path = _ingested(tmp_path, sealed_store)
    assert _reboot(path, embedder) > 0
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in (b"Encounter", b"Keeling", b"Observation/", b"HIV", b"urn:uuid"):
        assert secret not in raw


@pytest.mark.parametrize("change", [_flip, _delete, _move])
def test_tampering_is_detected_at_boot_with_a_code(
        tmp_path: Path, embedder: Embedder, sealed_store: bytes,
        change: Callable[[sqlite3.Connection], None]) -> None:
    path = _ingested(tmp_path, sealed_store)
    assert _reboot(path, embedder) > 0  # the twin: untouched, it boots
    _edit(path, change)
    with pytest.raises(RecordsError) as err:
        _reboot(path, embedder)
    assert err.value.code == "records.store_tampered"


def test_another_key_does_not_open_the_store(
        tmp_path: Path, embedder: Embedder, sealed_store: bytes) -> None:
    path = _ingested(tmp_path, sealed_store)
    with pytest.raises(RecordsError) as err:
        _reboot(path, embedder, key=bytes(32))
    assert err.value.code == "records.store_tampered"
