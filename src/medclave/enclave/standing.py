"""The enclave re-checks its own standing with the brokers it holds keys from.

Every ``interval`` the monitor asks each broker (``KbsClient.standing``: fresh evidence over a
broker nonce, a signed answer) whether this enclave is still in good standing with the owner of
each key it holds: the model key (every share's broker, for a threshold key), the audit key
seed. It stops serving (``InferenceService.revoke``: keys dropped, every request answered
``enclave.revoked``) when

* any broker answers, signed, that it is revoked; or
* no check has come back good for ``max_age`` (the brokers unreachable, or answers that do not
  verify): fail closed, so an operator who blocks the brokers cannot keep a revoked enclave
  serving; ``max_age`` is the longest a revocation can go unnoticed.

Availability is thus bounded by the brokers' (see docs/continuous-trust.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medclave.errors import MedclaveError

log = logging.getLogger("medclave.enclave.standing")


@dataclass(frozen=True)
class StandingCheck:
    """One (broker, resource) question; ``ask`` returns "good" or "revoked", or raises."""

    name: str
    ask: Callable[[], str]


class StandingMonitor:
    def __init__(self, checks: Sequence[StandingCheck], on_revoked: Callable[[str], None], *,
                 interval: float, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._checks = tuple(checks)
        self._on_revoked = on_revoked
        self._interval = interval
        self._max_age = max_age
        self._clock = clock
        self._last_good = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.revoked: str | None = None

    def check_once(self) -> str:
        """One round: "good", "revoked" or "unknown" (some answer missing, still in time)."""
        if self.revoked is not None:
            return "revoked"
        failures: list[str] = []
        for check in self._checks:
            try:
                answer = check.ask()
            except MedclaveError as exc:
                failures.append(f"{check.name}: {exc.code}")
                continue
            if answer == "revoked":
                return self._revoke(f"revoked by the broker for {check.name}")
            if answer != "good":
                failures.append(f"{check.name}: unexpected answer")
        if not failures:
            self._last_good = self._clock()
            return "good"
        log.warning("standing check incomplete: %s", "; ".join(failures))
        if self._clock() - self._last_good > self._max_age:
            return self._revoke(f"no good standing for {self._max_age:.0f}s "
                                f"({'; '.join(failures)})")
        return "unknown"

    def _revoke(self, reason: str) -> str:
        self.revoked = reason
        self._on_revoked(reason)
        return "revoked"

    def start(self) -> None:
        if not self._checks or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="medclave-standing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self.check_once() == "revoked":
                    return
            except Exception as exc:  # the thread must not die silently
                log.error("standing check failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
