"""A tenant's searchable index, in enclave memory only: exact vector search, BM25, and their
reciprocal rank fusion.

Vectors: an exact scan (one matrix product over unit vectors) rather than an approximate index.
At 100k chunks of 384 dimensions it takes milliseconds on one core (benchmarks/retrieval.py
measures it against HNSW's usual ~1 ms), has recall 1.0 by construction, and needs no
index to rebuild or tune; the benchmark says when that stops being true.

BM25: SQLite FTS5 (``bm25()``, Robertson–Spärck Jones Okapi BM25 with k1 = 1.2, b = 0.75) over
an in-memory database (``:memory:``, ``temp_store = MEMORY``): an FTS index on disk would be
the notes' words in plaintext at rest, so it is rebuilt from the sealed store at boot like the
vectors. Clinical questions often hinge on an exact drug or test name, which is what BM25 finds
and embeddings blur.

Fusion: reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009), score
``sum 1 / (60 + rank)`` over the two lists, k = 60 as in the paper.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from medclave.records.embed import DIM, Vectors

RRF_K: Final = 60
MAX_QUERY_TERMS: Final = 32
_TERM = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class IndexedChunk:
    reference: str
    chunk: int
    patient: str
    text: str


class TenantIndex:
    """Chunks by position; removed chunks stay as tombstones until the next rebuild."""

    def __init__(self) -> None:
        self._vectors: Vectors = np.zeros((0, DIM), dtype=np.float32)
        self._alive: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._patients: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._patient_ids: dict[str, int] = {}
        self.chunks: list[IndexedChunk] = []
        self._by_ref: dict[str, list[int]] = {}
        self._fts = sqlite3.connect(":memory:", check_same_thread=False)
        self._fts.execute("PRAGMA temp_store = MEMORY")
        self._fts.execute("CREATE VIRTUAL TABLE fts USING fts5(text, patient UNINDEXED)")
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return int(self._alive.sum())

    def _pid(self, patient: str) -> int:
        return self._patient_ids.setdefault(patient, len(self._patient_ids))

    def add(self, chunks: Sequence[IndexedChunk], vectors: Vectors) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        with self._lock:
            start = len(self.chunks)
            self.chunks.extend(chunks)
            self._vectors = np.concatenate([self._vectors, vectors.astype(np.float32)])
            self._alive = np.concatenate([self._alive, np.ones(len(chunks), dtype=bool)])
            self._patients = np.concatenate([self._patients, np.array(
                [self._pid(c.patient) for c in chunks], dtype=np.int32)])
            for pos, c in enumerate(chunks, start):
                self._by_ref.setdefault(c.reference, []).append(pos)
            self._fts.executemany("INSERT INTO fts(rowid, text, patient) VALUES (?, ?, ?)",
                                  [(pos + 1, c.text, c.patient)
                                   for pos, c in enumerate(chunks, start)])

    def remove(self, references: Sequence[str]) -> None:
        with self._lock:
            for ref in references:
                for pos in self._by_ref.pop(ref, []):
                    self._alive[pos] = False
                    self._fts.execute("DELETE FROM fts WHERE rowid = ?", (pos + 1,))

    def _mask(self, patient: str | None) -> npt.NDArray[np.bool_]:
        if patient is None:
            return self._alive
        pid = self._patient_ids.get(patient)
        if pid is None:
            return np.zeros_like(self._alive)
        result: npt.NDArray[np.bool_] = self._alive & (self._patients == pid)
        return result

    def vector_search(self, query: Vectors, patient: str | None, n: int) -> list[int]:
        """Positions of the ``n`` nearest chunks by cosine (exact)."""
        with self._lock:
            mask = self._mask(patient)
            if not mask.any():
                return []
            scores = self._vectors @ query.reshape(-1).astype(np.float32)
            scores = np.where(mask, scores, -np.inf)
            n = min(n, int(mask.sum()))
            top = np.argpartition(-scores, n - 1)[:n]
            return [int(i) for i in top[np.argsort(-scores[top], kind="stable")]]

    def text_search(self, query: str, patient: str | None, n: int) -> list[int]:
        """Positions of the ``n`` best BM25 matches of any of the query's terms."""
        terms = list(dict.fromkeys(_TERM.findall(query.lower())))[:MAX_QUERY_TERMS]
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)  # quoted: no FTS5 syntax from the query
        sql = "SELECT rowid FROM fts WHERE fts MATCH ?"
        args: tuple[object, ...] = (match,)
        if patient is not None:
            sql += " AND patient = ?"
            args += (patient,)
        with self._lock:
            rows = self._fts.execute(sql + " ORDER BY bm25(fts) LIMIT ?", (*args, n)).fetchall()
        return [int(r[0]) - 1 for r in rows]

    def hybrid(self, query: str, vector: Vectors, patient: str | None, n: int
               ) -> list[tuple[int, float]]:
        """``(position, fused score)``, best first, at most ``n``."""
        scores: dict[int, float] = {}
        for ranked in (self.vector_search(vector, patient, n), self.text_search(query, patient, n)):
            for rank, pos in enumerate(ranked, 1):
                scores[pos] = scores.get(pos, 0.0) + 1.0 / (RRF_K + rank)
        return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:n]
