"""Per-client token buckets: ``auth.rate_limited`` before any work is done for the client.

The clock is injected (monotonic seconds), so tests drive it; the table of buckets is bounded
(least recently seen clients are dropped first) so a flood of addresses cannot exhaust memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from medclave.errors import AuthError
from medclave.util.lru import Lru

MAX_CLIENTS = 100_000


class Limiter(Protocol):
    """What the broker's routes need: this one in memory, or
    :class:`~medclave.kbs.pg_ratelimit.PostgresRateLimiter` shared by replicas."""

    def check(self, client: str) -> None: ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` tokens per second, at most ``burst`` saved up, one token per request."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: Lru[str, _Bucket] = Lru(max_clients)
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Take one token for ``client`` or raise ``auth.rate_limited``."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(client)  # now the most recently seen
            if bucket is None:
                bucket = _Bucket(float(self.burst), now)
                self._buckets.put(client, bucket)  # drops the least recently seen beyond max
            else:
                bucket.tokens = min(
                    float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate
                )
                bucket.updated = now
            if bucket.tokens < 1.0:
                raise AuthError("auth.rate_limited", f"client {client} over {self.rate}/s")
            bucket.tokens -= 1.0
