"""Tenants' sealing roots: from the key broker, released only to enclaves the tenant's policy
accepts, or (development on sim) derived from a local key file.

The root is ``kbs:///TENANT/sealing-root/conversations`` (resource names have three segments:
type ``sealing-root``, name ``conversations``), fetched through the same authenticated release
as every broker secret (:meth:`medclave.kbs.client.KbsClient.fetch_release`: fresh evidence over
an ephemeral key, the answer signed by a pinned broker key). It is 32 random bytes (what the
broker generates for ``medclave kbs resource put`` without a secret) or 64 hex digits.

Rotation keeps old versions readable: a conversation records the root version it was created
under and is always opened with that version (fetched by number); new conversations take the
current version. Retiring a version at the broker therefore makes every conversation sealed
under it unreadable, which is how a tenant destroys old history wholesale. Re-sealing was not
chosen because it needs each patient's share, and the enclave never keeps one.
"""

from __future__ import annotations

import binascii
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medclave.enclave.commitkeys import read_key_file
from medclave.enclave.sealing.format import LABEL, ROOT_BYTES, lp
from medclave.errors import InputError, MedclaveError, SealingError
from medclave.kbs.names import SEALING_ROOT, ResourceName
from medclave.util.clock import Clock

if TYPE_CHECKING:
    from medclave.kbs.client import KbsClient

log = logging.getLogger("medclave.enclave")

RESOURCE_NAME = "conversations"


@dataclass(frozen=True)
class SealingRoot:
    version: int
    key: bytes


class SealingRoots(Protocol):
    def root(self, tenant: str, version: int | None = None) -> SealingRoot:
        """The tenant's root, its current version unless ``version``; or
        ``sealing.root_unavailable``."""
        ...


def sealing_resource(tenant: str) -> str:
    """``kbs:///TENANT/sealing-root/conversations``."""
    return str(ResourceName.of(tenant, SEALING_ROOT, RESOURCE_NAME))


def parse_root(secret: bytes) -> bytes:
    """32 raw bytes, or their 64 hex digits (surrounding whitespace ignored)."""
    if len(secret) == ROOT_BYTES:
        return secret
    text = secret.strip()
    if len(text) == 2 * ROOT_BYTES:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            pass
    raise SealingError("sealing.root_unavailable", "a sealing root is 32 bytes or 64 hex digits")


class FileSealingRoots:
    """Development on sim only: one local 0600 key file, one root per tenant derived from it
    (version 1). Whoever reads the file reads every conversation, as on sim anyway."""

    def __init__(self, path: Path) -> None:
        try:
            self._key = parse_root(read_key_file(path))
        except SealingError:
            raise InputError("config.invalid", f"{path.name} holds no 32-byte sealing root "
                             "(64 hex digits)") from None

    def root(self, tenant: str, version: int | None = None) -> SealingRoot:
        if version not in (None, 1):
            raise SealingError("sealing.root_unavailable", "the development root is version 1")
        derived = HKDF(hashes.SHA256(), ROOT_BYTES, None,
                       LABEL + b"/dev-root" + lp(tenant)).derive(self._key)
        return SealingRoot(1, derived)


class NoSealingRoots:
    def root(self, tenant: str, version: int | None = None) -> SealingRoot:
        raise SealingError("sealing.root_unavailable", "no sealing root source: set kbs_url "
                           "(or, on sim, sealing_root_file)")


Fetch = Callable[[str, int | None], SealingRoot]


def broker_fetcher(client: Callable[[Mapping[str, Any]], KbsClient],
                   runtime: Callable[[], Mapping[str, Any]]) -> Fetch:
    """Attested release of ``(tenant, version)``, fresh evidence over the current runtime."""

    def fetch(tenant: str, version: int | None) -> SealingRoot:
        with client(runtime()) as kbs:
            released = kbs.fetch_release(sealing_resource(tenant), version=version)
        return SealingRoot(released.version, parse_root(released.secret))

    return fetch


class BrokerSealingRoots:
    """Roots kept in enclave memory once released: numbered versions for the enclave's life,
    the current version re-asked after ``current_ttl`` so that a rotation reaches new
    conversations. A refusal is remembered for ``retry_after`` (one attested fetch per interval
    for a tenant without a root, not one per request)."""

    def __init__(self, fetch: Fetch, *, clock: Clock,
                 current_ttl: timedelta = timedelta(minutes=5),
                 retry_after: timedelta = timedelta(seconds=30)) -> None:
        self._fetch = fetch
        self._clock = clock
        self._ttl = current_ttl
        self._retry_after = retry_after
        self._versions: dict[tuple[str, int], bytes] = {}
        self._current: dict[str, tuple[datetime, int]] = {}
        self._failed: dict[tuple[str, int | None], datetime] = {}
        self._lock = threading.Lock()

    def root(self, tenant: str, version: int | None = None) -> SealingRoot:
        now = self._clock()
        with self._lock:
            if version is None:
                current = self._current.get(tenant)
                if current is not None and now < current[0]:
                    return SealingRoot(current[1], self._versions[(tenant, current[1])])
            elif (tenant, version) in self._versions:
                return SealingRoot(version, self._versions[(tenant, version)])
            failed = self._failed.get((tenant, version))
            if failed is not None and now < failed:
                raise SealingError("sealing.root_unavailable", "refused recently")
        try:
            got = self._fetch(tenant, version)
        except MedclaveError as exc:
            with self._lock:
                if len(self._failed) > 4096:  # tenants come from tokens: bounded
                    self._failed.clear()
                self._failed[(tenant, version)] = now + self._retry_after
            log.warning("sealing root for tenant %s refused: %s", tenant, exc.code)
            raise SealingError("sealing.root_unavailable", f"broker refused ({exc.code})"
                               ) from None
        if version is not None and got.version != version:
            raise SealingError("sealing.root_unavailable", "the broker released another version")
        with self._lock:
            self._versions[(tenant, got.version)] = got.key
            if version is None:
                self._current[tenant] = (now + self._ttl, got.version)
        return got
