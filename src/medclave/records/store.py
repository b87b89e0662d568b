"""The records store: every row sealed with AES-256-GCM under the tenant's data key.

What the operator's disk holds per row: the tenant, a row id, a chunk number and ciphertext.
The row id is ``HMAC-SHA256(row key, reference)[:16]`` (so even which FHIR ids a hospital holds
stays inside), and the AAD binds the tenant, the row id and the chunk number
(canonical JSON ``{"v": 1, "tenant", "row", "chunk"}``): a row moved to another tenant, another
resource or another chunk position no longer opens, and after opening, the reference inside
must hash to the row id it was stored under. A sealed manifest per tenant (the number of rows
and SHA-256 over their ids, updated in the same transaction as the rows) makes a deleted or
added row fail the boot as surely as a flipped byte: ``records.store_tampered``.

Keys (HKDF-SHA256 from the secret the broker releases as ``kbs:///TENANT/data-key/records``,
RFC 5869, info ``medclave-records-v1/…``): one for AES-256-GCM, one for row ids. Nonces are
random (96 bits): a tenant writes far fewer than 2^32 rows under one key (NIST SP 800-38D §8.3).

What it does not catch: the whole store rolled back to an older state of itself (every row and
the manifest from one earlier moment). That needs a counter outside the operator's reach (the
broker's), which is not built yet; docs/retrieval.md says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medclave.crypto.canonical import canonical_json
from medclave.errors import RecordsError

MANIFEST_CHUNK: Final = -1
RESOURCE_CHUNK: Final = -2  # the resource's metadata row; chunks are 0..n-1
_NONCE: Final = 12


def _derive(secret: bytes, label: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"medclave-records-v1/{label}".encode()).derive(secret)


@dataclass(frozen=True)
class SealedRow:
    tenant: str
    row: str  # hex row id
    chunk: int
    blob: bytes


class DataKey:
    """A tenant's sealing keys, derived from the released secret."""

    def __init__(self, tenant: str, secret: bytes) -> None:
        if len(secret) < 32:
            raise RecordsError("records.key_unavailable", "a data key has at least 32 bytes")
        self.tenant = tenant
        self._aead = AESGCM(_derive(secret, "aead"))
        self._rows = _derive(secret, "row-id")

    def row_id(self, reference: str) -> str:
        return hmac.new(self._rows, reference.encode(), hashlib.sha256).hexdigest()[:32]

    def _aad(self, row: str, chunk: int) -> bytes:
        return canonical_json({"v": 1, "tenant": self.tenant, "row": row, "chunk": chunk})

    def seal(self, row: str, chunk: int, payload: Mapping[str, Any]) -> SealedRow:
        nonce = os.urandom(_NONCE)
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return SealedRow(self.tenant, row, chunk,
                         nonce + self._aead.encrypt(nonce, data, self._aad(row, chunk)))

    def open(self, row: SealedRow) -> dict[str, Any]:
        if row.tenant != self.tenant or len(row.blob) < _NONCE + 16:
            raise _tampered(row)
        try:
            data = self._aead.decrypt(row.blob[:_NONCE], row.blob[_NONCE:],
                                      self._aad(row.row, row.chunk))
            payload = json.loads(data)
        except (InvalidTag, ValueError):
            raise _tampered(row) from None
        if not isinstance(payload, dict):
            raise _tampered(row)
        ref = payload.get("reference")
        if row.chunk != MANIFEST_CHUNK and (not isinstance(ref, str) or self.row_id(ref) != row.row):
            raise _tampered(row)
        return payload


def _tampered(row: SealedRow) -> RecordsError:
    return RecordsError("records.store_tampered", f"tenant {row.tenant}: row {row.row[:8]}… "
                        f"chunk {row.chunk} does not authenticate")


def manifest_digest(rows: Sequence[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for row, chunk in sorted(rows):
        h.update(f"{row}:{chunk}\n".encode())
    return h.hexdigest()


class RecordStore(Protocol):
    def tenants(self) -> list[str]: ...

    def rows(self, tenant: str) -> Iterator[SealedRow]: ...

    def replace(self, tenant: str, drop: Sequence[str], rows: Sequence[SealedRow]) -> None:
        """In one transaction: delete every row of the row ids ``drop``, then upsert ``rows``."""
        ...

    def close(self) -> None: ...


class MemoryRecordStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, int], bytes] = {}
        self._lock = threading.Lock()

    def tenants(self) -> list[str]:
        with self._lock:
            return sorted({t for t, _, _ in self._rows})

    def rows(self, tenant: str) -> Iterator[SealedRow]:
        with self._lock:
            items = [(k, v) for k, v in self._rows.items() if k[0] == tenant]
        for (t, r, c), blob in sorted(items):
            yield SealedRow(t, r, c, blob)

    def replace(self, tenant: str, drop: Sequence[str], rows: Sequence[SealedRow]) -> None:
        gone = set(drop)
        with self._lock:
            for key in [k for k in self._rows if k[0] == tenant and k[1] in gone]:
                del self._rows[key]
            for row in rows:
                self._rows[(row.tenant, row.row, row.chunk)] = row.blob

    def close(self) -> None:
        pass


class SqliteRecordStore:
    """SQLite in WAL mode; each :meth:`replace` is one transaction (all of a request or none)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS sealed (tenant TEXT NOT NULL, "
                             "row TEXT NOT NULL, chunk INTEGER NOT NULL, blob BLOB NOT NULL, "
                             "PRIMARY KEY (tenant, row, chunk)) WITHOUT ROWID")

    def tenants(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT tenant FROM sealed "
                                                   "ORDER BY tenant")]

    def rows(self, tenant: str) -> Iterator[SealedRow]:
        with self._lock:
            found = self._db.execute("SELECT row, chunk, blob FROM sealed WHERE tenant = ? "
                                     "ORDER BY row, chunk", (tenant,)).fetchall()
        for row, chunk, blob in found:
            yield SealedRow(tenant, str(row), int(chunk), bytes(blob))

    def replace(self, tenant: str, drop: Sequence[str], rows: Sequence[SealedRow]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM sealed WHERE tenant = ? AND row = ?",
                                     [(tenant, r) for r in drop])
                self._db.executemany("INSERT OR REPLACE INTO sealed VALUES (?, ?, ?, ?)",
                                     [(r.tenant, r.row, r.chunk, r.blob) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
