"""Continuous attestation in the proxy: trust that keeps being checked.

:class:`TrustWatch` runs beside the proxy and, every ``poll`` seconds:

* re-reads the verifier's inputs the hospital keeps on disk, the appraisal policy and the
  collateral file (``attestation/collateral.py``: TCB baseline, revoked measurements); when
  either file's bytes change, the enclave is attested again under the new inputs at once
  (``EnclaveSession.update_trust``), without restarting the proxy; a file that no longer
  loads stops requests (fail closed) until it does;
* re-attests the enclave when its last attestation is ``reattest_after`` old (five minutes by
  default), whether or not requests come, so a revoked or changed enclave is noticed without
  traffic; a failed attestation is retried every ``retry_failed_after``.

The OHTTP key is re-attested when it changes: the enclave answers ``crypto.key_unknown`` and the
session attests before retrying (``client/session.py``), and a scheduled attestation pins the
key the enclave now advertises. A failure of any of these stops new requests at once
(``client.reattestation_failed``), and ``/medclave/status`` says why (``trust``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from medclave.attestation.collateral import Collateral, parse_collateral
from medclave.attestation.policy import AppraisalPolicy, load_policy
from medclave.client.replicas import Enclaves
from medclave.errors import MedclaveError

log = logging.getLogger("medclave.proxy.trust")


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


class TrustWatch:
    def __init__(self, session: Enclaves, *, policy_file: Path | None = None,
                 collateral_file: Path | None = None, poll: float = 2.0) -> None:
        self._session = session
        self._policy_file = policy_file
        self._collateral_file = collateral_file
        self._poll = poll
        self._seen = self._digests()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.attestations = 0  # scheduled or triggered attestations run (for the benchmark)

    def _digests(self) -> tuple[str, str]:
        return (_digest(self._policy_file) if self._policy_file else "",
                _digest(self._collateral_file) if self._collateral_file else "")

    def tick(self) -> str:
        """One round; says what it did: ``reloaded``, ``reattested``, ``idle`` or ``failed``."""
        now = self._digests()
        if now != self._seen:
            self._seen = now
            return self._reload()
        try:
            before = self._session.enclave
            after = self._session.reattest_if_due()
        except MedclaveError:
            self.attestations += 1
            return "failed"  # recorded in the session; status says why
        if after is not None and after is not before:
            self.attestations += 1
            return "reattested"
        return "idle"

    def _reload(self) -> str:
        try:
            policy: AppraisalPolicy | None = (load_policy(self._policy_file)
                                              if self._policy_file else None)
            collateral: Collateral | None = None
            if self._collateral_file is not None:
                collateral = parse_collateral(self._collateral_file.read_bytes())
        except (MedclaveError, OSError) as exc:
            code = exc.code if isinstance(exc, MedclaveError) else "config.invalid"
            log.error("verifier inputs no longer load (%s): requests stopped", code)
            self._session.fail(code, "the policy or collateral file no longer loads")
            return "failed"
        log.info("verifier inputs changed: re-attesting now")
        self.attestations += 1
        try:
            self._session.update_trust(policy=policy, collateral=collateral)
        except MedclaveError:
            return "failed"
        return "reloaded"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="medclave-trust",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.tick()
            except Exception as exc:  # the watch must not die silently
                log.error("trust watch round failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
