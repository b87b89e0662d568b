"""Tenant commitment keys: the HMAC keys under which audit entries commit to prompts and answers.

The key is the tenant's secret, not the enclave's: the hospital keeps it, and with it (and its
own copy of a prompt) opens a commitment or replays an inference years later. The enclave gets
it from the key broker as ``kbs:///TENANT/commitment-key/audit``, released like a model key only
to evidence the tenant's release policy accepts (:class:`BrokerCommitKeys`), or, in development
on sim, from a local 0600 file (:class:`FileCommitKeys`). When neither holds a key for a tenant,
its requests are refused with ``audit.commitment_key_unavailable``: a key the enclave made up
would hide content from everyone, the tenant included, and the log would promise an audit
trail nobody can ever open.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medclave.audit.entry import MAX_KEY_BYTES, parse_commitment_key
from medclave.errors import AuditError, InputError, MedclaveError
from medclave.kbs.names import ResourceName
from medclave.util.clock import Clock
from medclave.util.files import read_secret_file

if TYPE_CHECKING:
    from medclave.kbs.client import KbsClient

log = logging.getLogger("medclave.enclave")

RESOURCE_TYPE = "commitment-key"
RESOURCE_NAME = "audit"
MAX_REMEMBERED_FAILURES = 1024


@dataclass(frozen=True)
class CommitKey:
    """A tenant's commitment key and the broker version it is (None: a development file)."""

    key: bytes
    version: int | None = None


class CommitKeys(Protocol):
    def key_for(self, tenant: str) -> CommitKey:
        """The tenant's key, or ``audit.commitment_key_unavailable``."""
        ...


def commitment_resource(tenant: str) -> str:
    """``kbs:///TENANT/commitment-key/audit`` (``input.malformed`` for a tenant id that is not
    a broker owner name)."""
    return str(ResourceName.of(tenant, RESOURCE_TYPE, RESOURCE_NAME))


def read_key_file(path: Path) -> bytes:
    """A commitment key file: a regular file, mode 0600 or stricter, holding one key.

    ``config.invalid`` otherwise: a key others on the machine can read lets them open every
    commitment made under it.
    """
    data = read_secret_file(path, "commitment key", max_bytes=MAX_KEY_BYTES + 1)
    try:
        return parse_commitment_key(data)
    except InputError as exc:
        raise InputError("config.invalid", f"{path.name}: {exc.detail}") from None


class FileCommitKeys:
    """Development only: one key from a local file, for every tenant (sim has one trust domain
    anyway: whoever runs it reads everything)."""

    def __init__(self, path: Path) -> None:
        self._key = CommitKey(read_key_file(path))

    def key_for(self, tenant: str) -> CommitKey:
        return self._key


class NoCommitKeys:
    """No source configured: every tenant is refused."""

    def key_for(self, tenant: str) -> CommitKey:
        raise AuditError("audit.commitment_key_unavailable",
                         "no commitment key source: set kbs_url (or, on sim, "
                         "commitment_key_file)")


def broker_fetcher(client: Callable[[Mapping[str, Any]], KbsClient],
                   runtime: Callable[[], Mapping[str, Any]]) -> Callable[[str], CommitKey]:
    """Fetch a tenant's key through attested release: fresh evidence per fetch, over the
    enclave's current runtime, so the tenant's release policy can name the model and build.
    ``client`` opens a broker client (trusted broker keys, TLS) for a runtime."""

    def fetch(tenant: str) -> CommitKey:
        with client(runtime()) as kbs:
            released = kbs.fetch_release(commitment_resource(tenant))
        return CommitKey(released.secret, released.version)

    return fetch


class BrokerCommitKeys:
    """Keys fetched per tenant on first use and kept in memory for the enclave's life.

    A refusal is remembered for ``retry_after``, so a tenant without a key (or a broker that is
    down) costs one attested fetch per interval rather than one per request; at most one fetch
    per tenant is in flight.
    """

    def __init__(self, fetch: Callable[[str], CommitKey], *, clock: Clock,
                 retry_after: timedelta = timedelta(seconds=30),
                 parse: Callable[[bytes], bytes] = parse_commitment_key,
                 what: str = "commitment key") -> None:
        # ``parse``/``what``: the records data keys (enclave/records_boot.py) are raw bytes,
        # which a commitment key's whitespace stripping would corrupt.
        self._fetch = fetch
        self._parse = parse
        self._what = what
        self._clock = clock
        self._retry_after = retry_after
        self._keys: dict[str, CommitKey] = {}
        self._failed: dict[str, tuple[datetime, str]] = {}
        self._tenant_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._dropped = False

    def key_for(self, tenant: str) -> CommitKey:
        with self._lock:
            if self._dropped:
                raise _unavailable("enclave.revoked")
            key = self._cached(tenant)
            if key is not None:
                return key
            tenant_lock = self._tenant_locks.setdefault(tenant, threading.Lock())
        with tenant_lock:
            with self._lock:
                key = self._cached(tenant)
                if key is not None:
                    return key
            try:
                fetched = self._fetch(tenant)
                key = CommitKey(self._parse(fetched.key), fetched.version)
            except MedclaveError as exc:
                self._remember_failure(tenant, exc.code)
                # Nothing is served for this tenant until a fetch succeeds; the operator's log
                # says why (an unauthenticated broker answer reads kbs.answer_unauthenticated).
                log.warning("%s for tenant %s refused: %s; its requests are refused",
                            self._what, tenant, exc.code)
                raise _unavailable(exc.code) from None
            with self._lock:
                if self._dropped:
                    raise _unavailable("enclave.revoked")
                self._keys[tenant] = key
                self._failed.pop(tenant, None)
            return key

    def drop(self) -> None:
        """Forget every tenant's key (revocation); each later request is refused."""
        with self._lock:
            self._keys.clear()
            self._dropped = True

    def _cached(self, tenant: str) -> CommitKey | None:
        key = self._keys.get(tenant)
        if key is not None:
            return key
        failed = self._failed.get(tenant)
        if failed is not None and self._clock() < failed[0]:
            raise _unavailable(failed[1])
        return None

    def _remember_failure(self, tenant: str, code: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failed) >= MAX_REMEMBERED_FAILURES:  # bounded: tenants come from tokens
                self._failed = {t: f for t, f in self._failed.items() if f[0] > now}
                if len(self._failed) >= MAX_REMEMBERED_FAILURES:
                    self._failed.pop(next(iter(self._failed)))
            self._failed[tenant] = (now + self._retry_after, code)
            if tenant not in self._keys:
                self._tenant_locks.pop(tenant, None)


def _unavailable(cause: str) -> AuditError:
    return AuditError("audit.commitment_key_unavailable",
                      f"the key broker did not release the tenant's commitment key ({cause})")
