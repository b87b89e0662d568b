"""Builds a :class:`KeyBroker` from :class:`KbsSettings`: store, KEK and trust anchors."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from medclave.errors import InputError
from medclave.kbs.keywrap import EnvKek, FileKek, KeyWrapper
from medclave.kbs.ratelimit import Limiter, RateLimiter
from medclave.kbs.service import KeyBroker
from medclave.kbs.settings import KbsSettings
from medclave.kbs.signing import BrokerSigner
from medclave.kbs.sqlite_store import SqliteKbsStore
from medclave.kbs.store import Decision, KbsStore, MemoryKbsStore
from medclave.util.clock import system_clock


def ensure_data_dir(settings: KbsSettings) -> None:
    path = settings.data_dir
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)  # holds the KEK and the wrapped secrets: owner only


def open_store(settings: KbsSettings, *, exclusive: bool = False) -> KbsStore:
    """The configured store; ``exclusive`` (a KEK rotation): refused while any broker has it
    open, and no broker opens it meanwhile."""
    if settings.store == "memory":
        return MemoryKbsStore()
    if settings.postgres:
        from medclave.kbs.postgres_store import PostgresKbsStore  # the `postgres` extra

        return PostgresKbsStore(settings.store, allow_remote=settings.store_allow_remote,
                                exclusive=exclusive)
    ensure_data_dir(settings)
    return SqliteKbsStore(settings.db_path, exclusive=exclusive)


def open_limiter(settings: KbsSettings, store: KbsStore,
                 clock: Callable[[], float] | None = None) -> Limiter:
    """Per-client token buckets: in PostgreSQL beside a PostgreSQL store (every replica draws
    on the same buckets), else in this process. ``clock``: seconds, for tests."""
    if settings.postgres:
        from medclave.kbs.pg_ratelimit import PostgresRateLimiter
        from medclave.kbs.postgres_store import PostgresKbsStore

        if isinstance(store, PostgresKbsStore):
            return PostgresRateLimiter(store.pool, settings.rate_per_second,
                                       settings.rate_burst, clock=clock)
    return RateLimiter(settings.rate_per_second, settings.rate_burst,
                       clock=clock or time.monotonic)


def open_wrapper(settings: KbsSettings, *, create: bool = True) -> KeyWrapper:
    if settings.kek is not None:
        return EnvKek.from_value(settings.kek.get_secret_value(), where="MEDCLAVE_KBS_KEK")
    if create:
        ensure_data_dir(settings)
        return FileKek.load_or_create(settings.kek_path)
    return FileKek.load(settings.kek_path)


def open_signer(settings: KbsSettings, *, create: bool = True) -> BrokerSigner:
    if settings.signing_key is not None:
        return BrokerSigner.from_seed(settings.signing_key.get_secret_value(),
                                      where="MEDCLAVE_KBS_SIGNING_KEY")
    if create:
        ensure_data_dir(settings)
        return BrokerSigner.load_or_create(settings.signing_key_path)
    if not settings.signing_key_path.exists():
        raise InputError("config.invalid", f"no signing key at {settings.signing_key_path.name}; "
                         "start the broker once (kbs serve) to create it")
    return BrokerSigner.load_or_create(settings.signing_key_path)


def check_kek(store: KbsStore, wrapper: KeyWrapper) -> None:
    """``config.invalid`` when the store was last re-wrapped under another KEK than ``wrapper``
    (a broker started with the pre-rotation key): refused at start, not at the first release."""
    recorded = store.kek_id()
    if recorded is not None and recorded != wrapper.key_id:
        raise InputError("config.invalid", f"the store's secrets are wrapped under KEK "
                         f"{recorded}, not the configured KEK {wrapper.key_id}; if a KEK "
                         "rotation was interrupted, run `medclave kbs kek rotate` again")


def _fingerprints(values: tuple[str, ...]) -> frozenset[str]:
    out = frozenset(v.strip().lower().replace(":", "") for v in values)
    bad = [v for v in out if len(v) != 64 or any(c not in "0123456789abcdef" for c in v)]
    if bad:
        raise InputError("config.invalid", f"sim root fingerprint is not SHA-256 hex: {bad[0]!r}")
    return out


def build_broker(
    settings: KbsSettings,
    *,
    store: KbsStore | None = None,
    wrapper: KeyWrapper | None = None,
    signer: BrokerSigner | None = None,
    clock: Callable[[], datetime] = system_clock,
    on_decision: Callable[[Decision], None] | None = None,
    trusted_roots: frozenset[str] | None = None,
) -> KeyBroker:
    store = store if store is not None else open_store(settings)
    wrapper = wrapper if wrapper is not None else open_wrapper(settings)
    try:
        check_kek(store, wrapper)
    except InputError:
        store.close()
        raise
    return KeyBroker(
        store,
        wrapper,
        signer=signer if signer is not None else open_signer(settings),
        sim_roots=_fingerprints(settings.sim_roots),
        trusted_roots=trusted_roots,
        nonce_ttl=timedelta(seconds=settings.nonce_ttl_seconds),
        clock=clock,
        on_decision=on_decision,
    )
