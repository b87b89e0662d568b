"""Verdicts by time window, for the verifiers (parse results by content digest use
:class:`medclave.util.lru.Lru` directly).

Verification code reads no clock, so a cached verdict carries the window in which it holds (the
intersection of its certificates' validity periods, narrowed by the CRLs that were checked) and a
lookup at the injected ``now`` outside that window is a miss: the cached path decides exactly as
the uncached one would at that time. Values are shared between threads, so only immutable ones
(frozen dataclasses, tuples, certificates) may be stored, and never ``None`` (it means a miss).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from medclave.util.lru import Lru

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class _Held(Generic[V]):
    valid_from: datetime
    valid_until: datetime
    value: V


class VerdictCache(Generic[K, V]):
    """An LRU of verdicts, each holding from ``valid_from`` to ``valid_until`` inclusive."""

    def __init__(self, size: int) -> None:
        self._lru: Lru[K, _Held[V]] = Lru(size)

    def get(self, key: K, now: datetime) -> V | None:
        """The verdict stored under ``key`` if it holds at ``now``, else None (a miss)."""
        held = self._lru.get(key)
        if held is None or not held.valid_from <= now <= held.valid_until:
            return None
        return held.value

    def put(self, key: K, value: V, *, valid_from: datetime, valid_until: datetime) -> None:
        self._lru.put(key, _Held(valid_from, valid_until, value))

    def clear(self) -> None:
        self._lru.clear()
