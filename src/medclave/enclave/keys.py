"""The enclave's OHTTP keys: generated inside, never exported, rotated on a schedule.

The current key is the one attestation advertises (its configuration is in ``runtime``, bound
by report_data). After a rotation the previous key still opens requests for a grace period, so
clients that attested just before keep working until they notice the new configuration; after
that they get ``crypto.key_unknown`` (RFC 9458 §4.3: the gateway cannot decapsulate), re-attest
and retry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from medclave.crypto.ohttp import KeyConfig, OhttpKeyPair
from medclave.errors import EnclaveError
from medclave.util.clock import Clock


@dataclass(frozen=True)
class _Retired:
    pair: OhttpKeyPair
    until: datetime


class KeyRing:
    def __init__(self, clock: Clock, *, rotation: timedelta | None = None,
                 grace: timedelta = timedelta(minutes=5), first_key_id: int = 1) -> None:
        self._clock = clock
        self._rotation = rotation
        self._grace = grace
        self._lock = threading.Lock()
        self._current = OhttpKeyPair.generate(first_key_id & 0xFF)
        self._created = clock()
        self._retired: list[_Retired] = []
        self._dropped = False

    def drop(self) -> None:
        """Forget every private key (revocation): no request opens from now on. Python cannot
        wipe the bytes it held; dropping the last reference is what it can do."""
        with self._lock:
            self._dropped = True
            self._retired = []
            # Replace the served key by one nobody was given, so no reference to it remains.
            self._current = OhttpKeyPair.generate(self._current.key_id)

    @property
    def current(self) -> OhttpKeyPair:
        self._maybe_rotate()
        if self._dropped:
            raise EnclaveError("enclave.revoked", "the OHTTP keys were dropped")
        return self._current

    @property
    def config(self) -> KeyConfig:
        return self.current.config

    def rotate(self) -> OhttpKeyPair:
        """A fresh key with the next key id; the old one is kept for the grace period."""
        with self._lock:
            return self._rotate_locked()

    def _rotate_locked(self) -> OhttpKeyPair:
        now = self._clock()
        self._retired = [r for r in self._retired if r.until > now]
        self._retired.append(_Retired(self._current, now + self._grace))
        used = {r.pair.key_id for r in self._retired}
        key_id = (self._current.key_id + 1) & 0xFF
        while key_id in used:  # 256 ids and a short grace: never loops for long
            key_id = (key_id + 1) & 0xFF
        self._current = OhttpKeyPair.generate(key_id)
        self._created = now
        return self._current

    def usable(self) -> list[OhttpKeyPair]:
        """Keys a request may be encapsulated to now: the current one, then those in grace."""
        self._maybe_rotate()
        now = self._clock()
        with self._lock:
            if self._dropped:
                return []
            return [self._current, *(r.pair for r in self._retired if r.until > now)]

    def _maybe_rotate(self) -> None:
        if self._rotation is None or self._dropped:
            return
        with self._lock:  # checked under the lock: two threads never rotate twice
            if self._clock() - self._created >= self._rotation:
                self._rotate_locked()
