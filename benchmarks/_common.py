"""Helpers the benchmark modules share (the runner skips modules starting with ``_``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def vectors_dir() -> Path:
    """MEDCLAVE_VECTORS, else ../shared/vectors beside the repository, read in place."""
    env = os.environ.get("MEDCLAVE_VECTORS")
    here = Path(__file__).resolve().parent.parent
    return Path(env) if env else here.parent / "shared" / "vectors"


def rate(fn: Callable[[], object], n: int) -> float:
    """Calls per second over ``n`` calls, after one warm-up call (imports, first-use caches)."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)
