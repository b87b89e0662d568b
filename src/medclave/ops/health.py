"""Liveness and readiness.

``GET /healthz``: the process answers (200 ``{"status": "alive"}``); nothing else is checked, so
an orchestrator restarts only a process that cannot answer at all.

``GET /readyz``: whether the service should be sent work: 200 ``{"status": "ready", "checks":
{...}}`` when every check holds, else 503 ``{"status": "not_ready", ...}`` with each check as
``"ok"`` or ``"failing"``. The checks are the service's own (keys released, model loaded, store
open, attestation fresh, as applies), evaluated on each call, plus ``draining``, which fails
from the moment a graceful shutdown begins (:mod:`medclave.ops.lifecycle`), so that the load
balancer stops sending before the listener closes. A check that raises counts as failing; why is
logged at DEBUG by its exception type only (a detail could say more than a probe should).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger("medclave.ops.health")

Check = Callable[[], bool]
CHECK_NAME: Final = frozenset({"draining", "engine", "keys", "model", "store", "audit",
                               "attestation", "signing_key", "upstream", "jwks"})


class Health:
    """A service's readiness checks and its draining flag."""

    def __init__(self, checks: Mapping[str, Check] | None = None) -> None:
        unknown = set(checks or {}) - CHECK_NAME
        if unknown:
            raise ValueError(f"unknown readiness checks {sorted(unknown)}")
        self._checks = dict(checks or {})
        self._draining = threading.Event()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def start_draining(self) -> None:
        self._draining.set()

    def add(self, name: str, check: Check) -> None:
        if name not in CHECK_NAME:
            raise ValueError(f"unknown readiness check {name!r}")
        self._checks[name] = check

    def readiness(self) -> tuple[bool, dict[str, str]]:
        results = {"draining": "failing" if self.draining else "ok"}
        for name, check in self._checks.items():
            try:
                ok = bool(check())
            except Exception as exc:
                log.debug("readiness check %s raised %s", name, type(exc).__name__)
                ok = False
            results[name] = "ok" if ok else "failing"
        return all(v == "ok" for v in results.values()), results
