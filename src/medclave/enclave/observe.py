"""The enclave's operations wiring (:mod:`medclave.ops`): its readiness checks and metrics.

Ready when: the engine is loaded and taking work, the OHTTP keys are usable, the audit log's
store answers, the commitment key of every tenant the deployment names has been released, and
the platform's evidence is fresh (produced within ``attestation_max_age`` seconds, attesting
anew when it is not). Metrics beyond every service's: engine queue depth, running generations,
tokens (total and per second), admitted inferences, attestation age, audit log size and the age
of its latest checkpoint; refusals inside the encapsulation are counted by code through the
service's ``on_refusal``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from fastapi import FastAPI

from medclave.enclave.hooks import AuditLogSink
from medclave.enclave.service import InferenceService
from medclave.enclave.settings import EnclaveSettings
from medclave.ops.health import Health
from medclave.ops.http import Operations, instrument
from medclave.ops.metrics import Rate, ServiceMetrics
from medclave.ops.tracing import Tracing

ATTESTATION_MAX_AGE = 3600.0


class _Checkpoints:
    """When the audit log last grew: every append commits a signed checkpoint of the new size
    (audit/log.py), so the checkpoint's age is the time since the size last changed, as seen by
    this probe (read at each scrape and readiness check)."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._last = (size(), time.time())

    def age(self) -> float:
        size = self._size()
        with self._lock:
            if size != self._last[0]:
                self._last = (size, time.time())
            return time.time() - self._last[1]


def _engine_counters(service: InferenceService) -> Callable[[], object] | None:
    counters = getattr(service.engine, "counters", None)
    return counters if callable(counters) else None


def instrument_enclave(app: FastAPI, service: InferenceService, settings: EnclaveSettings,
                       *, tracing: Tracing | None = None) -> Operations:
    metrics = ServiceMetrics("enclave")
    health = Health()
    service.on_refusal = metrics.refusal

    counters = _engine_counters(service)
    if counters is not None:
        def read(field: str) -> Callable[[], float]:
            return lambda: float(getattr(counters(), field))
        metrics.gauge("medclave_engine_queue_depth", "Generations waiting for the engine",
                      read("queued"))
        metrics.gauge("medclave_engine_running", "Generations running", read("running"))
        metrics.counter("medclave_engine_tokens", "Tokens generated", read("tokens"))
        metrics.gauge("medclave_engine_tokens_per_second",
                      "Tokens generated per second over the last minute", Rate(read("tokens")))
        health.add("engine", lambda: counters() is not None)
    else:
        health.add("engine", lambda: service.engine is not None)

    def attestation_age() -> float | None:
        return None if service.last_attested is None else time.time() - service.last_attested

    def attestation_fresh() -> bool:
        age = attestation_age()
        if age is None or age > ATTESTATION_MAX_AGE:
            service.attest(os.urandom(32))  # the TEE still signs for this runtime
        return True

    metrics.gauge("medclave_attestation_age_seconds",
                  "Seconds since the enclave last produced evidence", attestation_age)
    health.add("attestation", attestation_fresh)
    health.add("keys", lambda: bool(service.keys.usable()))
    if isinstance(service.audit, AuditLogSink):
        audit_log = service.audit.audit_log
        checkpoints = _Checkpoints(lambda: audit_log.size)
        metrics.gauge("medclave_audit_entries", "Entries in the audit log",
                      lambda: float(audit_log.size))
        metrics.gauge("medclave_audit_checkpoint_age_seconds",
                      "Seconds since the audit log's latest checkpoint", checkpoints.age)
        health.add("audit", lambda: audit_log.store.size() >= 0)  # the store answers
        sink = service.audit
        tenants = settings.auth_tenants

        def keys_released() -> bool:
            for tenant in tenants:
                sink.check(tenant)  # raises while a tenant's key is unavailable
            return bool(service.keys.usable())
        health.add("keys", keys_released)
    return instrument(app, service="enclave", health=health, metrics=metrics,
                      tracing=tracing or Tracing.of("enclave", settings.tracing,
                                                    settings.otlp_endpoint))
