"""Bounded inference concurrency: slots that are taken or refused, never queued.

Issue 9 §6: 45 long inferences in the shared thread pool made the unauthenticated attestation
endpoint wait behind them. Inference now runs under limits of its own (the router's
``max_concurrent_inferences`` over all callers, the service's ``max_concurrent_per_tenant`` per
tenant, known only once a request is decapsulated and authorized), and a full limit is answered
at once with ``enclave.busy`` (429) and ``Retry-After`` (RFC 9110 §10.2.3): a queue would only
move the wait, and the threads it holds, into the enclave.

A slot is held for as long as its answer is being produced: a streamed answer holds it until the
stream ends, however it ends (the client leaving included).
"""

from __future__ import annotations

import threading
from typing import Any

from medclave.errors import EnclaveError

BUSY = "enclave.busy"


class Busy(EnclaveError):
    """A concurrency limit is full: 429, with ``Retry-After`` in seconds."""

    def __init__(self, code: str = BUSY, detail: str | None = None, *, retry_after: int = 1,
                 **context: Any) -> None:
        # The base class's signature: clients rebuild errors from a code alone.
        super().__init__(code, detail, **context)
        self.retry_after = max(1, retry_after)

    def headers(self) -> list[tuple[str, str]]:
        return [("retry-after", str(self.retry_after))]


class Slot:
    """One taken slot; :meth:`release` gives it back once, however often it is called."""

    def __init__(self, slots: Slots, key: str) -> None:
        self._slots = slots
        self._key = key
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._slots._give(self._key)


class Slots:
    """At most ``limit`` slots held at once per key (thread-safe); a full key is refused."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a limit is at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # only keys holding slots: bounded by the limit's users

    def take(self, key: str = "") -> Slot | None:
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.limit:
                return None
            self._held[key] = held + 1
        return Slot(self, key)

    def held(self, key: str = "") -> int:
        with self._lock:
            return self._held.get(key, 0)

    def _give(self, key: str) -> None:
        with self._lock:
            held = self._held[key] - 1
            if held:
                self._held[key] = held
            else:
                del self._held[key]
