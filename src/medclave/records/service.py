"""The records service: ingest, the boot rebuild, and authorized hybrid search.

Everything here runs inside the enclave. Ingest parses and validates a whole request, chunks
and embeds it, seals every row under the tenant's data key and writes them in one transaction,
and only then updates the in-memory index (so a refused or failed request leaves no trace in
either). Search fuses vector and BM25 candidates, then authorizes each candidate's resource for
*this* caller with Cedar before any text is returned; it over-fetches (4k, then wider) until
``k`` allowed chunks are found or the candidates run out.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.auth.consent import consent_from_fhir
from medclave.errors import InputError, MedclaveError, RecordsError
from medclave.records import access
from medclave.records.access import Allowed, Caller, ResourceMeta, TenantAccess
from medclave.records.chunks import chunks_of
from medclave.records.embed import DIM, Embedder, Vectors
from medclave.records.fhir import parse
from medclave.records.index import IndexedChunk, TenantIndex
from medclave.records.store import (
    MANIFEST_CHUNK,
    RESOURCE_CHUNK,
    DataKey,
    RecordStore,
    SealedRow,
    manifest_digest,
)
from medclave.util.clock import Clock

log = logging.getLogger("medclave.records")

KeySource = Callable[[str], bytes]
MAX_K: Final = 64
MANIFEST_ROW: Final = "0" * 32


@dataclass(frozen=True)
class Hit:
    reference: str
    patient: str
    chunk: int
    score: float
    text: str
    why: Allowed

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "patient": self.patient,
                "score": round(self.score, 6), "text": self.text,
                "why": {"reason": self.why.reason, "policies": list(self.why.policies)}}


def _check_consent(tenant: str, meta: ResourceMeta) -> None:
    assert meta.consent is not None
    try:
        consent_from_fhir([meta.consent], tenant=tenant, patient=meta.patient.split("/", 1)[1])
    except InputError as exc:
        raise RecordsError("records.invalid_resource", f"{meta.reference}: {exc.detail}",
                           path=meta.reference) from None


class _Trail:
    """The records authorizer's decision sink: per call, the decisions in order."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, record: DecisionRecord) -> None:
        bucket = getattr(self._local, "bucket", None)
        if bucket is None:
            raise MedclaveError("internal", "a records decision outside a search")
        bucket.append(record)

    @contextmanager
    def collect(self) -> Iterator[list[DecisionRecord]]:
        bucket: list[DecisionRecord] = []
        self._local.bucket = bucket
        try:
            yield bucket
        finally:
            self._local.bucket = None


@dataclass
class _Tenant:
    key: DataKey
    index: TenantIndex
    access: TenantAccess
    rows: set[tuple[str, int]]


class RecordsService:
    def __init__(self, store: RecordStore, embedder: Embedder, keys: KeySource, *,
                 authorizer_factory: Callable[[Callable[[DecisionRecord], None]], Authorizer],
                 clock: Clock) -> None:
        self.store = store
        self.embedder = embedder
        self._keys = keys
        self._trail = _Trail()
        self.authorizer = authorizer_factory(self._trail)
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._lock = threading.Lock()
        self._write = threading.Lock()  # one ingest at a time: rows, manifest and index agree
        self.boot_seconds = 0.0

    # --- boot ------------------------------------------------------------------------------

    def rebuild(self) -> int:
        """Open every sealed row of every tenant and rebuild the indexes; ``records.
        store_tampered`` if any row, or the set of rows, does not authenticate. Returns the
        number of chunks loaded."""
        started = time.perf_counter()
        total = 0
        for tenant in self.store.tenants():
            total += self._load(tenant)
        self.boot_seconds = time.perf_counter() - started
        log.info("records rebuilt: %d chunks in %.2f s", total, self.boot_seconds)
        return total

    def _key(self, tenant: str) -> DataKey:
        try:
            return DataKey(tenant, self._keys(tenant))
        except RecordsError:
            raise
        except Exception as exc:  # the broker's refusal, whatever its type: no key, no records
            code = getattr(exc, "code", type(exc).__name__)
            raise RecordsError("records.key_unavailable", f"tenant {tenant}: {code}") from None

    def _load(self, tenant: str) -> int:
        key = self._key(tenant)
        manifest: dict[str, Any] | None = None
        metas: list[ResourceMeta] = []
        chunks: list[IndexedChunk] = []
        vectors: list[bytes] = []
        seen: set[tuple[str, int]] = set()
        for row in self.store.rows(tenant):
            payload = key.open(row)
            if row.chunk == MANIFEST_CHUNK:
                manifest = payload
                continue
            seen.add((row.row, row.chunk))
            if row.chunk == RESOURCE_CHUNK:
                metas.append(ResourceMeta.from_json(payload["meta"]))
            else:
                chunks.append(IndexedChunk(payload["reference"], row.chunk, payload["patient"],
                                           payload["text"]))
                vectors.append(base64.b64decode(payload["vector"]))
        if manifest is None or manifest.get("rows") != len(seen) or manifest.get(
                "digest") != manifest_digest(sorted(seen)):
            raise RecordsError("records.store_tampered", f"tenant {tenant}: the rows do not "
                               "match the sealed manifest (a row was added or removed)")
        index = TenantIndex()
        if chunks:
            index.add(chunks, np.frombuffer(b"".join(vectors), dtype="<f4").reshape(-1, DIM))
        state = TenantAccess(tenant)
        state.update(metas)
        with self._lock:
            self._tenants[tenant] = _Tenant(key, index, state, seen)
        return len(chunks)

    def _tenant(self, tenant: str, *, create: bool) -> _Tenant | None:
        with self._lock:
            found = self._tenants.get(tenant)
        if found is not None or not create:
            return found
        t = _Tenant(self._key(tenant), TenantIndex(), TenantAccess(tenant), set())
        with self._lock:
            return self._tenants.setdefault(tenant, t)

    # --- ingest ----------------------------------------------------------------------------

    def ingest(self, tenant: str, doc: Any) -> dict[str, int]:
        parsed = parse(doc)
        kept = [r for r in parsed.resources if r.patient is not None]
        if not kept:
            raise InputError("input.missing", "no resource about a patient to ingest")
        for r in kept:
            if r.type == "Consent":  # refused now, not at every later search of the tenant
                _check_consent(tenant, ResourceMeta.of(r))
        chunked = [(r, chunks_of(r)) for r in kept]
        texts = [c.text for _, cs in chunked for c in cs]
        vectors = self.embedder.embed(texts) if texts else np.zeros((0, DIM), dtype=np.float32)
        with self._write:
            t = self._tenant(tenant, create=True)
            assert t is not None
            key = t.key
            rows: list[SealedRow] = []
            new: list[IndexedChunk] = []
            new_rows: set[tuple[str, int]] = set()
            drop = [key.row_id(r.reference) for r, _ in chunked]
            metas = [ResourceMeta.of(r) for r, _ in chunked]
            at = 0
            for (res, cs), meta in zip(chunked, metas, strict=True):
                row = key.row_id(res.reference)
                rows.append(key.seal(row, RESOURCE_CHUNK, {"reference": res.reference,
                                                           "meta": meta.to_json()}))
                new_rows.add((row, RESOURCE_CHUNK))
                for c in cs:
                    vec = vectors[at]
                    at += 1
                    assert res.patient is not None
                    rows.append(key.seal(row, c.index, {
                        "reference": res.reference, "patient": res.patient, "text": c.text,
                        "vector": base64.b64encode(vec.astype("<f4").tobytes()).decode()}))
                    new_rows.add((row, c.index))
                    new.append(IndexedChunk(res.reference, c.index, res.patient, c.text))
            dropped = set(drop)
            after = {r for r in t.rows if r[0] not in dropped} | new_rows
            rows.append(key.seal(MANIFEST_ROW, MANIFEST_CHUNK, {
                "rows": len(after), "digest": manifest_digest(sorted(after))}))
            self.store.replace(tenant, drop, rows)  # one transaction; then memory follows
            t.rows = after
            t.index.remove([r.reference for r, _ in chunked])
            if new:
                t.index.add(new, vectors)
            t.access.update(metas)
        return {"resources": len(kept), "chunks": len(new), "skipped": parsed.skipped}

    # --- search ----------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self.embedder.embed(texts)

    def search(self, caller: Caller, query: str, *, patient: str | None, k: int,
               grant: str | None = None) -> list[Hit]:
        if not 1 <= k <= MAX_K:
            raise InputError("input.malformed", f"k is between 1 and {MAX_K}")
        if patient is not None and not patient.startswith("Patient/"):
            raise InputError("input.malformed", "patient is Patient/ID")
        t = self._tenant(caller.tenant, create=False)
        if t is None or not query.strip():
            return []  # no records, or nothing to look for: the same as nothing permitted
        vector = self.embedder.embed([query])[0]
        now = self._clock()
        n = max(4 * k, 32)
        decided: dict[str, Allowed | None] = {}
        while True:
            fused = t.index.hybrid(query, vector, patient, n)
            chunks = [(t.index.chunks[pos], score) for pos, score in fused]
            pending = list(dict.fromkeys(c.reference for c, _ in chunks
                                         if c.reference not in decided))
            allowed = access.authorize(self.authorizer, self._trail, t.access, caller, pending,
                                       now=now, grant=grant)
            for ref in pending:
                decided[ref] = allowed.get(ref)
            hits = [Hit(c.reference, c.patient, c.chunk, score, c.text, why)
                    for c, score in chunks if (why := decided[c.reference]) is not None]
            if len(hits) >= k or len(fused) < n:
                return hits[:k]
            n *= 4

    def grant_break_glass(self, caller: Caller, patient: str, reason: str) -> str:
        """A time-boxed break-glass grant for ``patient`` (Cedar ``break_glass`` decides who
        may ask: clinicians, never researchers); its every use raises an alert."""
        t = self._tenant(caller.tenant, create=False)
        if t is None or patient not in t.access.patients():
            raise InputError("input.malformed", "no such patient")  # as for a forbidden one
        user = t.access.user(caller, self.authorizer)
        with self._trail.collect():
            grant = self.authorizer.grant_break_glass(
                user, patient.removeprefix("Patient/"), reason=reason,
                entities=t.access.entities(self.authorizer), now=self._clock())
        return grant.id

    def close(self) -> None:
        self.store.close()
