"""KEK rotation: every stored secret re-wrapped under a new key-encryption key, all or nothing.

:func:`rotate_kek` is the store-level step: in one store transaction
(:meth:`~medclave.kbs.store.KbsStore.rewrap_secrets`) each secret version is opened with the old
KEK (under its own AAD, :func:`~medclave.kbs.service.wrap_aad`), wrapped under the new one, and
the new wrapping is opened again before it is kept; the new KEK's id goes in the store and a
``kek_rotate`` decision in the broker's decision log, in that same transaction. A secret the old
KEK does not open (a wrong old key, a row tampered with) or a crash rolls all of it back: the
store stays byte for byte as it was, under the old KEK.

:func:`rotate_configured_kek` is the administrator's procedure around it (``medclave kbs kek
rotate``), on a stopped broker's data folder (the store is opened with an exclusive lock: refused,
``kbs.unavailable``, while a broker has it open, and a broker cannot start during a rotation):

1. the new KEK: ``--new-kek-file``, or a fresh one written 0600 to ``KEK_FILE.new`` (kept there
   if a run stops before the commit, and reused by the next run);
2. the store transaction above; until it commits, the old KEK file is untouched and opens
   everything;
3. a file KEK: the new key atomically replaces ``kek_file`` (``rename(2)``). A KEK from
   ``MEDCLAVE_KBS_KEK`` (a secret store): the operator puts the new one there.

A crash between 2 and 3 leaves a store recorded under the new KEK and the old key file in place:
the broker refuses to start with a KEK whose id is not the store's
(:func:`~medclave.kbs.factory.check_kek`), and
running the command again finishes step 3 (it sees the store already under the new KEK).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from medclave.errors import CryptoError, InputError
from medclave.kbs.factory import ensure_data_dir, open_store, open_wrapper
from medclave.kbs.keywrap import FileKek, KeyWrapper
from medclave.kbs.names import ResourceName
from medclave.kbs.service import wrap_aad
from medclave.kbs.settings import KbsSettings
from medclave.kbs.store import Decision, KbsStore
from medclave.util.files import read_secret_text, write_atomic

ACTION = "kek_rotate"
RESOURCE = "kek"  # not a resource name: the decision is the administrator's to see


@dataclass(frozen=True)
class KekRotation:
    old_kek_id: str
    new_kek_id: str
    secret_versions: int
    resumed: bool  # the store was already under the new KEK (an earlier run committed)


def rotate_kek(store: KbsStore, old: KeyWrapper, new: KeyWrapper, *, now: datetime,
               client: str = "local") -> KekRotation:
    """Re-wrap every secret version in ``store`` from ``old`` to ``new``, atomically."""
    if old.key_id == new.key_id:
        raise InputError("config.invalid", "the new KEK is the current one")
    recorded = store.kek_id()
    if recorded == new.key_id:
        return KekRotation(old.key_id, new.key_id, 0, resumed=True)
    if recorded is not None and recorded != old.key_id:
        raise InputError("config.invalid", f"the store is under KEK {recorded}, not the "
                         f"configured KEK {old.key_id}")

    def rewrap(name: str, version: int, wrapped: bytes) -> bytes:
        aad = wrap_aad(ResourceName.parse(name), version)
        plain = old.unwrap(wrapped, aad)  # a wrong old KEK raises here: all is rolled back
        out = new.wrap(plain, aad)
        if new.unwrap(out, aad) != plain:  # never keep a wrapping that does not open
            raise CryptoError("crypto.decrypt_failed", "re-wrapped secret does not open")
        return out

    decision = Decision(at=now, action=ACTION, resource=RESOURCE, outcome="allowed",
                        # No actor: no owner sees it, only the administrator.
                        client=client, detail=f"KEK {old.key_id} replaced by KEK {new.key_id}")
    count = store.rewrap_secrets(rewrap, kek_id=new.key_id, decision=decision)
    return KekRotation(old.key_id, new.key_id, count, resumed=False)


def pending_path(settings: KbsSettings) -> Path:
    return settings.kek_path.with_name(settings.kek_path.name + ".new")


def rotate_configured_kek(settings: KbsSettings, *, new_kek_file: Path | None, now: datetime,
                          rotate: Callable[..., KekRotation] = rotate_kek) -> dict[str, Any]:
    """The procedure of the module docstring on the (stopped) broker's data folder."""
    if settings.store == "memory":
        raise InputError("config.invalid", "a memory store holds nothing to re-wrap")
    old = open_wrapper(settings, create=False)
    ensure_data_dir(settings)
    # Exclusive: refused while a broker (or another command) has the store open (SQLite or
    # PostgreSQL, where every broker replica counts).
    store = open_store(settings, exclusive=True)
    try:
        return _rotate_locked(settings, store, old, new_kek_file, now, rotate)
    finally:
        store.close()


def _rotate_locked(settings: KbsSettings, store: KbsStore, old: KeyWrapper,
                   new_kek_file: Path | None, now: datetime,
                   rotate: Callable[..., KekRotation]) -> dict[str, Any]:
    pending = pending_path(settings)
    made = False
    if new_kek_file is not None:
        source = new_kek_file
        new: FileKek = FileKek.load(source)
    else:
        source = pending
        made = not pending.exists()
        new = FileKek.create(pending) if made else FileKek.load(pending)
    try:
        result = rotate(store, old, new, now=now)
    except BaseException:
        if made:
            pending.unlink(missing_ok=True)  # never used: the store is under the old KEK
        raise
    out: dict[str, Any] = {"old_kek_id": result.old_kek_id, "new_kek_id": result.new_kek_id,
                           "secret_versions": result.secret_versions,
                           "resumed": result.resumed}
    if settings.kek is None:
        # Committed: the key file now becomes the new KEK, in one rename.
        write_atomic(settings.kek_path, read_secret_text(source, "KEK").strip().encode() + b"\n")
        if source == pending:
            pending.unlink()
        out["kek_file"] = str(settings.kek_path)
    else:
        out["next"] = (f"put the KEK in {source.name} into the secret store as "
                       "MEDCLAVE_KBS_KEK, restart the broker, then delete the file")
        out["new_kek_file"] = str(source)
    return out
