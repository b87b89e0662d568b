"""Records retrieval (issue 12): ingest, embeddings, search at 10k and 100k chunks, the
authorization filter, the boot rebuild, and a retrieval-augmented answer's time to first token.

Rows:
  ingest                    RecordsService.ingest of one Synthea bundle (its first
                            MEDCLAVE_BENCH_RETRIEVAL_ENTRIES entries) into the SQLite store:
                            validate, chunk, embed, seal, commit; resources/s and chunks/s
  onnxruntime direct        the baseline of embedding: the same tokenizer and ONNX session,
                            texts in their given order, padded per batch of 32, mean pooling
  Embedder.embed            the service's embedder on the same texts (batches sorted by length)
  exact NumPy scan @N       the baseline of search: one matrix product and a full argsort over N
                            unit vectors (N = 10k, 100k), top 10
  vector_search @N          TenantIndex.vector_search (exact, argpartition), recall@10 against
                            the scan
  hybrid @N                 TenantIndex.hybrid: vectors + in-memory FTS5 BM25 + RRF, top 10
  authorize 50              access.authorize of 50 candidate resources for one clinician
                            (Cedar batch, the shipped policies)
  boot rebuild @100k        RecordsService.rebuild of a store of 100k sealed chunks
  plain chat TTFT           llama.cpp (the bundled model), first streamed token of a question
  RAG chat TTFT             the same question with retrieval: search, authorize, spotlight
                            k=MEDCLAVE_BENCH_RETRIEVAL_K chunks before the question, first token

Short mode (MEDCLAVE_BENCH_RETRIEVAL_SHORT=1): fewer entries, 5 rounds everywhere, one rebuild.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from benchmarks._common import Goal, Report, env_int, interleave, percentile, vectors_dir
from medclave.auth.authorizer import Authorizer
from medclave.auth.breakglass import BreakGlass
from medclave.records import access
from medclave.records.access import Caller
from medclave.records.embed import DIM, Embedder
from medclave.records.index import IndexedChunk, TenantIndex
from medclave.records.service import MANIFEST_ROW, RecordsService
from medclave.records.store import (
    MANIFEST_CHUNK,
    RESOURCE_CHUNK,
    DataKey,
    MemoryRecordStore,
    RecordStore,
    SqliteRecordStore,
    manifest_digest,
)

TENANT = "bench"
KEY = bytes(range(32))
WORDS = ("hiv", "viral", "load", "cd4", "count", "tuberculosis", "isoniazid", "rifampin", "fever",
         "cough", "weight", "height", "pulse", "temperature", "oxygen", "saturation",
         "immunization", "influenza", "tdap", "mmr", "hepatitis", "note", "plan", "assessment",
         "history", "patient", "reports", "night", "sweats", "fatigue", "nevirapine",
         "lamivudine", "zidovudine", "stavudine", "prophylaxis", "screening", "negative",
         "positive", "indeterminate")


def _now() -> datetime:
    return datetime.now(UTC)


def _service(store: RecordStore, embedder: Embedder) -> RecordsService:
    return RecordsService(store, embedder, lambda t: KEY, clock=_now, authorizer_factory=lambda
                          sink: Authorizer(sink=sink, clock=_now, break_glass=BreakGlass()))


def _direct(embedder: Embedder) -> Callable[[list[str]], np.ndarray]:
    """onnxruntime and tokenizers used directly, as a reader of their docs would."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from medclave.records.embed import model_file, tokenizer_file

    session = ort.InferenceSession(str(model_file()), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.no_padding()
    tok.enable_truncation(256)

    def run(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 32):
            enc = tok.encode_batch(texts[i:i + 32])
            width = max(len(e.ids) for e in enc)
            ids = np.array([e.ids + [0] * (width - len(e.ids)) for e in enc], dtype=np.int64)
            mask = (np.arange(width)[None, :] < np.array([len(e.ids) for e in enc])[:, None])
            mask64 = mask.astype(np.int64)
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask64,
                                        "token_type_ids": np.zeros_like(ids)})[0]
            pooled = (hidden * mask64[:, :, None]).sum(1) / mask64.sum(1, keepdims=True)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out)

    return run


def _synthetic_index(n: int, rng: np.random.Generator) -> tuple[TenantIndex, np.ndarray]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = np.array(WORDS)
    chunks = [IndexedChunk(f"Observation/o{i}", 0, f"Patient/p{i % 500}",
                           " ".join(words[rng.integers(0, len(words), 12)])) for i in range(n)]
    index = TenantIndex()
    index.add(chunks, vectors)
    return index, vectors


def _sealed_store(n: int, rng: np.random.Generator) -> MemoryRecordStore:
    """A store of ``n`` chunks in the service's row format (docs/retrieval.md)."""
    key = DataKey(TENANT, KEY)
    store = MemoryRecordStore()
    rows, ids = [], []
    for i in range(n // 2):  # two chunks per resource
        ref, patient = f"Observation/o{i}", f"Patient/p{i % 500}"
        row = key.row_id(ref)
        meta = {"reference": ref, "type": "Observation", "patient": patient, "category": "lab",
                "security": [], "members": [], "consent": None}
        rows.append(key.seal(row, RESOURCE_CHUNK, {"reference": ref, "meta": meta}))
        ids.append((row, RESOURCE_CHUNK))
        for c in range(2):
            vec = rng.standard_normal(DIM).astype("<f4")
            vec /= np.linalg.norm(vec)
            rows.append(key.seal(row, c, {"reference": ref, "patient": patient,
                                          "text": " ".join(rng.choice(WORDS, 12)),
                                          "vector": base64.b64encode(vec.tobytes()).decode()}))
            ids.append((row, c))
    rows.append(key.seal(MANIFEST_ROW, MANIFEST_CHUNK, {"rows": len(ids),
                                                        "digest": manifest_digest(ids)}))
    store.replace(TENANT, [], rows)
    return store


def _ms(fn: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    t = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        t.append((time.perf_counter() - s) * 1000)
    return statistics.median(t), percentile(t, 0.99)


def _progress(text: str) -> None:
    print(f"[retrieval] {text}", file=sys.stderr, flush=True)


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    short = os.environ.get("MEDCLAVE_BENCH_RETRIEVAL_SHORT") == "1"
    entries = env_int("MEDCLAVE_BENCH_RETRIEVAL_ENTRIES", 120 if short else 400)
    queries = env_int("MEDCLAVE_BENCH_RETRIEVAL_QUERIES", 50 if short else 200)
    k = env_int("MEDCLAVE_BENCH_RETRIEVAL_K", 4)
    rng = np.random.default_rng(12)
    fhir = vectors_dir().parent / "fhir"
    bundle = json.loads(sorted(fhir.glob("*.json"))[1].read_text())
    part = {**bundle, "entry": bundle["entry"][:entries]}
    embedder = Embedder()

    # --- ingest ---------------------------------------------------------------------------
    report = Report("retrieval", "Records retrieval: ingest, embeddings, search, authorization")
    ingest_res: list[float] = []
    ingest_chunks: list[float] = []
    with TemporaryDirectory() as tmp:
        for r in range(2 if short else 5):
            svc = _service(SqliteRecordStore(Path(tmp) / f"r{r}.sqlite3"), embedder)
            start = time.perf_counter()
            done = svc.ingest(TENANT, part)
            took = time.perf_counter() - start
            ingest_res.append(done["resources"] / took)
            ingest_chunks.append(done["chunks"] / took)
            svc.close()
    report.row("ingest (SQLite)", ingest_res, "resources/s")
    report.row("ingest (SQLite) chunks", ingest_chunks, "chunks/s")

    _progress(f"ingest: {ingest_res}")
    # --- embedding ------------------------------------------------------------------------
    svc = _service(MemoryRecordStore(), embedder)
    svc.ingest(TENANT, part)
    texts = [c.text for c in svc._tenants[TENANT].index.chunks][:256]
    direct = _direct(embedder)
    emb = interleave({
        "direct": lambda: len(texts) / _timed(lambda: direct(texts)),
        "embedder": lambda: len(texts) / _timed(lambda: embedder.embed(texts)),
    })
    report.baseline("onnxruntime direct", emb["direct"], "chunks/s")
    report.row("Embedder.embed", emb["embedder"], "chunks/s", baseline=emb["direct"])

    _progress(f"embedding: {emb}")
    # --- search ---------------------------------------------------------------------------
    for n in (10_000, 100_000):
        _search_rows(report, n, rng, queries)
        _progress(f"search at {n} done")

    # --- authorization --------------------------------------------------------------------
    t = svc._tenants[TENANT]
    refs = list(t.access.meta)[:50]
    npi = next(m for meta in t.access.meta.values() for m in meta.members)
    caller = Caller("dr", TENANT, ("clinician",), npi)
    auth = interleave({"authorize": lambda: _ms(lambda: access.authorize(
        svc.authorizer, svc._trail, t.access, caller, refs, now=_now(), grant=None),
        20)[0]})
    report.row("authorize 50 candidates p50", auth["authorize"], "ms",
               goal=Goal("<=", 5.0, "value"))

    _progress(f"authorize: {auth}")
    # --- boot rebuild ---------------------------------------------------------------------
    store = _sealed_store(100_000, rng)
    rebuilds = []
    for _ in range(1 if short else 3):
        fresh = _service(store, embedder)
        start = time.perf_counter()
        fresh.rebuild()
        rebuilds.append(time.perf_counter() - start)
    report.row("boot rebuild @100k chunks", rebuilds, "s")
    _progress(f"rebuild: {rebuilds}")
    report.emit()
    sys.stdout.flush()  # llama.cpp's threads may abort the process at exit

    # --- time to first token (a table of its own: the engine is the heaviest part) ----------
    if os.environ.get("MEDCLAVE_BENCH_RETRIEVAL_TTFT", "1") == "1":
        ttft = Report("retrieval-ttft", "Records retrieval: time to first token, RAG vs plain")
        _ttft(ttft, svc, k)
        ttft.emit()
        sys.stdout.flush()


def _search_rows(report: Report, n: int, rng: np.random.Generator, queries: int) -> None:
    index, vectors = _synthetic_index(n, rng)
    qs = rng.standard_normal((queries, DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    cursor = {"i": 0}

    def next_q() -> np.ndarray:
        cursor["i"] = (cursor["i"] + 1) % queries
        return qs[cursor["i"]]

    def scan(q: np.ndarray) -> list[int]:
        return [int(i) for i in np.argsort(-(vectors @ q))[:10]]

    recall = statistics.mean(
        len(set(index.vector_search(q, None, 10)) & set(scan(q))) / 10 for q in qs[:50])
    lat = interleave({
        "scan": lambda: _ms(lambda: scan(next_q()), queries)[0],
        "index": lambda: _ms(lambda: index.vector_search(next_q(), None, 10), queries)[0],
        "hybrid": lambda: _ms(lambda: index.hybrid("hiv viral load fever", next_q(), None, 10),
                              queries)[0],
    })
    p99 = [_ms(lambda: index.vector_search(next_q(), None, 10), queries)[1]]
    label = f"@{n // 1000}k"
    report.baseline(f"exact NumPy scan {label} p50", lat["scan"], "ms")
    report.row(f"vector_search {label} p50", lat["index"], "ms", baseline=lat["scan"])
    report.row(f"vector_search {label} p99", p99, "ms")
    report.row(f"hybrid {label} p50", lat["hybrid"], "ms", baseline=lat["scan"])
    report.row(f"recall@10 vs exact {label}", [recall], "", goal=Goal(">=", 0.95, "value"))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ttft(report: Report, svc: RecordsService, k: int) -> None:
    from medclave.enclave.engines.base import SamplingParams
    from medclave.enclave.engines.llamacpp import LlamaCppEngine
    from medclave.enclave.model import default_model_path
    from medclave.enclave.retrieval import spotlight

    engine = LlamaCppEngine(str(default_model_path()), n_ctx=2048, n_threads=2, seed=0)
    question = "What was the HIV viral load in July 2019?"
    patient = "Patient/f1731e33-dc55-4ee8-72d7-cece2e49bedd"
    caller = Caller("pt", TENANT, ("patient",), patient)  # the bundle ingested is hers
    params = SamplingParams(max_tokens=1, temperature=0.0)

    def first_token(messages: list[dict[str, Any]]) -> float:
        start = time.perf_counter()
        for _ in engine.chat_stream(messages, params):
            break
        return time.perf_counter() - start

    def plain() -> float:
        return first_token([{"role": "user", "content": question}])

    def rag() -> float:
        start = time.perf_counter()
        hits = svc.search(caller, question, patient=patient, k=k)
        system = spotlight(hits)
        return (time.perf_counter() - start) + first_token(
            [{"role": "system", "content": system}, {"role": "user", "content": question}])

    ttft = interleave({"plain": plain, "rag": rag})
    report.baseline("plain chat TTFT", [v * 1000 for v in ttft["plain"]], "ms")
    report.row(f"RAG chat TTFT (k={k})", [v * 1000 for v in ttft["rag"]], "ms",
               baseline=[v * 1000 for v in ttft["plain"]])
    report.note("RAG TTFT = search + Cedar filter + spotlight + the engine's prefill of the "
                "longer prompt; measured at the engine, without the HTTP and OHTTP hops both "
                "requests share.")
    engine.close()


if __name__ == "__main__":
    main()
