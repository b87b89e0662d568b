"""A strike register of encapsulated requests: the same OHTTP request never runs twice.

Issue 10: replay protection belongs to the request, not to the access token (which is a bearer
credential reused until it expires, RFC 6750). The operator's network sees every encapsulated
request and could send one again; decrypting it again would run the inference again, under the
caller's identity, and write a second audit entry.

Each request's HPKE encapsulated key ``enc`` is fresh and random per request (RFC 9458 §4.3:
the client sets up a new HPKE context for every request), so it names the request. RFC 9458
§6.5 leaves anti-replay to the gateway and suggests a strike register of such values. Ours is
kept per OHTTP key, and a key's register lives exactly as long as the key can open anything:
once the key leaves the :class:`~medclave.enclave.keys.KeyRing` (after rotation and its grace
period) a replay of a request made to it fails to decapsulate (``crypto.key_unknown``), so
forgetting its register then leaves no gap. That makes the register time-limited by the key
schedule (``key_rotation_seconds`` + ``key_grace_seconds``) and bounded in size:

* a key whose register holds ``per_key`` values takes no more requests (``crypto.key_unknown``,
  which makes Medclave clients attest again and retry once); when it is the current key, it is
  rotated first, so clients find a fresh key. Without a rotation schedule this bounds a key's
  life to ``per_key`` requests.
* past ``total`` values across all live keys (a flood while old keys are in their grace
  period), requests are refused the same way until old keys retire: fail closed, never forget.

Only values of requests that decrypted are recorded (the AEAD tag authenticates the request
under ``enc``), so garbage cannot fill the register. Memory is about 100 bytes a value: 2**20
values is ~100 MiB at most.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final, Protocol

from medclave.crypto.hpke import NENC
from medclave.crypto.ohttp import HEADER_SIZE, OhttpKeyPair
from medclave.errors import CryptoError

PER_KEY: Final = 2**18
TOTAL: Final = 2**20


class Keys(Protocol):
    """What the guard needs of the :class:`~medclave.enclave.keys.KeyRing`."""

    def usable(self) -> list[OhttpKeyPair]: ...

    def rotate(self) -> OhttpKeyPair: ...


class ReplayGuard:
    """``admit(body, usable)`` once a request decrypted: ``protocol.replayed`` if it was seen."""

    def __init__(self, keys: Keys, *, per_key: int = PER_KEY, total: int = TOTAL) -> None:
        if not 0 < per_key <= total:
            raise ValueError("0 < per_key <= total")
        self._keys = keys
        self._per_key = per_key
        self._total = total
        self._lock = threading.Lock()
        # Keyed by the key's public key bytes (key ids are reused after 256 rotations).
        self._registers: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        with self._lock:
            return sum(len(r) for r in self._registers.values())

    def admit(self, body: bytes, usable: Sequence[OhttpKeyPair]) -> None:
        """Record the request's ``enc`` under the key that opened it (``usable``: the keys the
        request was decapsulated with); refuse a value already recorded."""
        key_id, enc = body[0], bytes(body[HEADER_SIZE:HEADER_SIZE + NENC])
        pair = next(p for p in usable if p.key_id == key_id)  # it decapsulated: it is there
        with self._lock:
            # The ring as it is now, read under this lock so that every caller sees rotations
            # in order: a register is dropped only once its key can open nothing.
            current = self._keys.usable()
            live = {p.config.public_key for p in current}
            for gone in [k for k in self._registers if k not in live]:
                del self._registers[gone]
            if pair.config.public_key not in live:
                return  # the key retired meanwhile: a replay of this request cannot decrypt
            register = self._registers.setdefault(pair.config.public_key, set())
            if enc in register:
                raise CryptoError("protocol.replayed", "this encapsulated request was already "
                                  "received")
            full = len(register) >= self._per_key
            if not full and sum(len(r) for r in self._registers.values()) < self._total:
                register.add(enc)
                return
            if full and pair.config.public_key == current[0].config.public_key:
                # Under this lock, so two callers never rotate twice (the ring never calls
                # back into the guard: no lock-order inversion).
                self._keys.rotate()
        raise CryptoError("crypto.key_unknown", "this key takes no more requests; attest again "
                          "for the current key")
