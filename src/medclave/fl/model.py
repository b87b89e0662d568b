"""The demo model: L2-regularised, class-weighted logistic regression in NumPy.

Small enough to fit a CPU in milliseconds, and the same code trains everywhere: a site alone, a
site's ClientApp inside a federated round, the clean-room enclave and the centralised baseline.
Parameters travel as Flower expects them, a list of arrays: ``[weights (d,), bias (1,)]``.

Positives are rare (about 3%), so the loss weights them by ``POS_WEIGHT``; without it, a few
full-batch steps learn mostly the intercept. Metrics are scikit-learn's: AUROC
(``roc_auc_score``) and AUPRC (``average_precision_score``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medclave.fl.cohort import FEATURES

Params = list[NDArray[np.float64]]

POS_WEIGHT = 10.0
L2 = 1e-3
LEARNING_RATE = 0.5
LOCAL_STEPS = 40


def initial_params(dims: int = len(FEATURES)) -> Params:
    return [np.zeros(dims), np.zeros(1)]


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
    return out


def predict(params: Params, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """P(positive) for preprocessed rows."""
    return _sigmoid(x @ params[0] + params[1][0])


def train(params: Params, x: NDArray[np.float64], y: NDArray[np.float64], *,
          steps: int = LOCAL_STEPS, lr: float = LEARNING_RATE) -> Params:
    """Full-batch gradient descent from ``params`` on preprocessed rows; returns new arrays."""
    w = params[0].astype(np.float64).copy()
    b = float(params[1][0])
    sample_w = np.where(y > 0.5, POS_WEIGHT, 1.0)
    norm = float(sample_w.sum())
    for _ in range(steps):
        err = (_sigmoid(x @ w + b) - y) * sample_w
        w -= lr * (x.T @ err / norm + L2 * w)
        b -= lr * float(err.sum() / norm)
    return [w, np.array([b])]


@dataclass(frozen=True)
class Scores:
    auroc: float
    auprc: float

    def as_dict(self) -> dict[str, float]:
        return {"auroc": round(self.auroc, 4), "auprc": round(self.auprc, 4)}


def evaluate(params: Params, x: NDArray[np.float64], y: NDArray[np.float64]) -> Scores:
    # Imported here: scikit-learn takes over a second to import, and Flower starts a fresh
    # ClientApp process for every message, most of which never evaluate.
    from sklearn.metrics import average_precision_score, roc_auc_score

    p = predict(params, x)
    return Scores(float(roc_auc_score(y, p)), float(average_precision_score(y, p)))
