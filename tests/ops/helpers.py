"""Shared pieces for the operations tests: free ports, polling, Prometheus text parsing."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.05) -> T:
    """``probe()``'s first value that is not None (polled; ``timeout`` bounds a failing test)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = probe()
        except Exception:
            got = None
        if got is not None:
            return got
        assert time.monotonic() < deadline, "never happened"
        time.sleep(every)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus exposition: (name, labels, value)."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.append((sample.name, dict(sample.labels), float(sample.value)))
    return out
