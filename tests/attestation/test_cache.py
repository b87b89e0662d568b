"""The verifiers' shared memos: LRU bounds and verdicts that hold only inside their window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medclave.attestation.cache import VerdictCache
from medclave.util.lru import Lru

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_lru_evicts_the_least_recently_used() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent: "b" goes first
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    lru.clear()
    assert lru.get("a") is None


def test_verdict_holds_inside_its_window_only() -> None:
    cache: VerdictCache[tuple[str, ...], str] = VerdictCache(4)
    cache.put(("k",), "ok", valid_from=T0, valid_until=T0 + timedelta(days=1))
    assert cache.get(("k",), T0) == "ok"
    assert cache.get(("k",), T0 + timedelta(days=1)) == "ok"
    assert cache.get(("k",), T0 - timedelta(seconds=1)) is None
    assert cache.get(("k",), T0 + timedelta(days=1, seconds=1)) is None
    assert cache.get(("other",), T0) is None
    # A miss outside the window forgets nothing: the verdict holds again inside it.
    assert cache.get(("k",), T0 + timedelta(hours=1)) == "ok"
    cache.clear()
    assert cache.get(("k",), T0) is None


def test_verdict_cache_is_bounded() -> None:
    cache: VerdictCache[int, bool] = VerdictCache(3)
    for n in range(10):
        cache.put(n, True, valid_from=T0, valid_until=T0)
    assert [n for n in range(10) if cache.get(n, T0)] == [7, 8, 9]
