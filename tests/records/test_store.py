"""The sealed store: the row format against its written definition, and tampering at boot, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medclave.errors import RecordsError
from medclave.records.embed import Embedder
from medclave.records.pgstore import PostgresRecordStore
from medclave.records.store import DataKey, RecordStore, SealedRow, SqliteRecordStore
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


Execute = Callable[[str, tuple[object, ...]], list[tuple[Any, ...]]]


@dataclass
class Db:
    """The ingested store on SQLite (a copy of the file) or PostgreSQL (the same sealed rows
    copied in), and the operator's raw access in SQLite's spelling (translated for PostgreSQL)."""

    kind: str
    where: str

    def open(self) -> RecordStore:
        if self.kind == "sqlite":
            return SqliteRecordStore(Path(self.where))
        return PostgresRecordStore(self.where)

    def execute(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            db = sqlite3.connect(self.where)
            try:
                rows = db.execute(sql, args).fetchall()
                db.commit()
                return rows
            finally:
                db.close()
        with psycopg.connect(self.where, autocommit=True) as conn:
            cur = conn.execute(sql.replace("sealed", "records_sealed").replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []

    def raw(self) -> bytes:
        if self.kind == "sqlite":
            folder = Path(self.where).parent
            return b"".join(p.read_bytes() for p in folder.iterdir())
        rows = self.execute("SELECT * FROM sealed")
        return b"".join(str(r[:3]).encode() + bytes(r[3]) for r in rows)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path, sealed_store: bytes) -> Db:
    path = tmp_path / "records.sqlite3"
    path.write_bytes(sealed_store)
    if request.param == "sqlite":
        return Db("sqlite", str(path))
    url = request.getfixturevalue("pg_url")
    PostgresRecordStore(url).close()
    source = sqlite3.connect(path)
    rows = source.execute("SELECT tenant, row, chunk, blob FROM sealed").fetchall()
    source.close()
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO records_sealed VALUES (%s, %s, %s, %s)", rows)
    return Db("postgres", url)


def _reboot(db: Db, embedder: Embedder, key: bytes = KEY) -> int:
    service = make_service(embedder, db.open(), key)
    try:
        return service.rebuild()
    finally:
        service.close()


def _flip(execute: Execute) -> None:
    """One bit of one ciphertext flipped (past the 12-byte nonce)."""
    row, chunk, blob = execute("SELECT row, chunk, blob FROM sealed ORDER BY row, chunk "
                               "LIMIT 1 OFFSET 3", ())[0]
    execute("UPDATE sealed SET blob = ? WHERE row = ? AND chunk = ?",
            (flip(bytes(blob), 20), row, chunk))


def _delete(execute: Execute) -> None:
    """A whole chunk row removed: every remaining row still authenticates."""
    row, chunk = execute("SELECT row, chunk FROM sealed WHERE chunk = 0 ORDER BY row LIMIT 1",
                         ())[0]
    execute("DELETE FROM sealed WHERE row = ? AND chunk = ?", (row, chunk))


def _move(execute: Execute) -> None:
    """A row moved to another chunk position."""
    row = execute("SELECT row FROM sealed WHERE chunk = 0 ORDER BY row LIMIT 1", ())[0][0]
    execute("UPDATE sealed SET chunk = 200 WHERE row = ? AND chunk = 0", (row,))


def test_the_store_reopens_at_boot_and_holds_no_plaintext(db: Db, embedder: Embedder) -> None:
    assert _reboot(db, embedder) > 0
    raw = db.raw()
    assert len(raw) > 10_000
    for secret in (b"Encounter", b"Keeling", b"Observation/", b"HIV", b"urn:uuid"):
        assert secret not in raw


@pytest.mark.parametrize("change", [_flip, _delete, _move])
def test_tampering_is_detected_at_boot_with_a_code(
        db: Db, embedder: Embedder, change: Callable[[Execute], None]) -> None:
    assert _reboot(db, embedder) > 0  # the twin: untouched, it boots
    change(db.execute)
    with pytest.raises(RecordsError) as err:
        _reboot(db, embedder)
    assert err.value.code == "records.store_tampered"


def test_another_key_does_not_open_the_store(db: Db, embedder: Embedder) -> None:
    with pytest.raises(RecordsError) as err:
        _reboot(db, embedder, key=bytes(32))
    assert err.value.code == "records.store_tampered"
