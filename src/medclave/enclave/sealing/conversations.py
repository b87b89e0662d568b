"""Sealed conversations: create, open (verified whole), append, list and delete, for any feature
that keeps a user's state inside the enclave (the triage chat is the first).

Only the owner opens a conversation: its key needs the sealing root (released to this enclave
alone), the owner's token subject and tenant, and the client share their app holds
(:mod:`.format`). Another user's conversation, a missing one, and one the given share does not
open are all ``sealing.not_found``; a conversation whose head opens but whose turns do not
verify (a turn dropped, reordered, replayed, altered) is ``sealing.integrity_failed``.
The share lives for one request, in memory; it is never written or logged.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from medclave.enclave.sealing import format as fmt
from medclave.enclave.sealing.roots import SealingRoot, SealingRoots
from medclave.enclave.sealing.store import SealedStore, StoredConversation
from medclave.errors import SealingError
from medclave.util.clock import Clock

SHARE_HEADER = "medclave-share"


def parse_share(value: str | None) -> bytes:
    """The client share from its base64url form (32 bytes), or ``sealing.share_missing``."""
    if not value or len(value) > 64:
        raise SealingError("sealing.share_missing")
    try:
        share = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise SealingError("sealing.share_missing", "the share is not base64url") from None
    if len(share) != fmt.SHARE_BYTES:
        raise SealingError("sealing.share_missing", "the share is 32 bytes")
    return share


@dataclass(frozen=True)
class Opened:
    """A conversation as its owner sees it, verified end to end."""

    conversation: str
    root_version: int
    meta: dict[str, Any]
    turns: tuple[dict[str, Any], ...]
    chains: tuple[str, ...]  # chain value after each turn, hex (the client may keep the last)
    key: bytes  # for appending within the same request; never leaves the enclave
    chain: bytes

    def public(self) -> dict[str, Any]:
        return {"id": self.conversation, "meta": self.meta, "root_version": self.root_version,
                "turns": [dict(t, chain=c) for t, c in zip(self.turns, self.chains,
                                                           strict=True)],
                "chain": self.chain.hex()}


@dataclass(frozen=True)
class Summary:
    conversation: str
    readable: bool
    meta: dict[str, Any]
    turns: int


class SealedConversations:
    def __init__(self, roots: SealingRoots, store: SealedStore, *, clock: Clock,
                 max_turns: int = 1000, max_per_user: int = 200) -> None:
        self.roots = roots
        self.store = store
        self._clock = clock
        self._max_turns = max_turns
        self._max_per_user = max_per_user
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, tenant: str, conversation: str) -> threading.Lock:
        with self._guard:
            if len(self._locks) > 10_000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            return self._locks.setdefault((tenant, conversation), threading.Lock())

    # --- create ------------------------------------------------------------------------------

    def create(self, tenant: str, subject: str, share: bytes, meta: dict[str, Any]) -> Opened:
        root = self.roots.root(tenant)
        owner = fmt.owner_pseudonym(root.key, tenant, subject)
        if len(self.store.owned(tenant, owner)) >= self._max_per_user:
            raise SealingError("sealing.too_large", "too many conversations; delete some")
        conversation = "conv_" + secrets.token_hex(16)
        key = fmt.conversation_key(root.key, share, tenant, subject, conversation, root.version)
        chain = fmt.chain_start(tenant, subject, conversation)
        full = {"created": int(self._clock().timestamp()), **meta}
        head = self._head(key, tenant, subject, conversation, 0, chain, full)
        self.store.create(StoredConversation(tenant, owner, conversation, root.version, head))
        return Opened(conversation, root.version, full, (), (), key, chain)

    @staticmethod
    def _head(key: bytes, tenant: str, subject: str, conversation: str, turns: int,
              chain: bytes, meta: dict[str, Any]) -> bytes:
        return fmt.seal(key, {"chain": chain.hex(), "meta": meta, "turns": turns},
                        fmt.head_aad(tenant, subject, conversation))

    # --- open --------------------------------------------------------------------------------

    def _find(self, tenant: str, subject: str, conversation: str
              ) -> tuple[StoredConversation, SealingRoot]:
        if not conversation.startswith("conv_") or len(conversation) > 64:
            raise SealingError("sealing.not_found")
        unavailable: SealingError | None = None
        for version in self.store.versions(tenant):
            try:
                root = self.roots.root(tenant, version)
            except SealingError as exc:  # retired, or the broker is away: try the others
                unavailable = exc
                continue
            row = self.store.get(tenant, fmt.owner_pseudonym(root.key, tenant, subject),
                                 conversation)
            if row is not None and row.root_version == version:
                return row, root
        # It may be sealed under a version this enclave cannot have: say so rather than "not
        # found" (the patient's export is what is at stake, not existence).
        raise unavailable or SealingError("sealing.not_found")

    def open(self, tenant: str, subject: str, conversation: str, share: bytes) -> Opened:
        """The whole conversation, every turn verified against the head and the chain."""
        row, root = self._find(tenant, subject, conversation)
        key = fmt.conversation_key(root.key, share, tenant, subject, conversation, row.root_version)
        try:
            head = fmt.open_record(key, row.head, fmt.head_aad(tenant, subject, conversation))
        except SealingError:
            # The head does not open: the wrong share (or a head altered at rest, which
            # cannot be told apart from it). Either way, nothing is disclosed.
            raise SealingError("sealing.not_found") from None
        count, head_chain, meta = head.get("turns"), head.get("chain"), head.get("meta")
        if not isinstance(count, int) or not isinstance(head_chain, str) or not isinstance(
                meta, dict):
            raise SealingError("sealing.integrity_failed", "the head is malformed")
        stored = self.store.turns(tenant, conversation)
        if [i for i, _ in stored] != list(range(len(stored))) or len(stored) != count:
            raise SealingError("sealing.integrity_failed",
                               f"{len(stored)} turns stored, the head says {count}")
        chain = fmt.chain_start(tenant, subject, conversation)
        turns: list[dict[str, Any]] = []
        chains: list[str] = []
        for index, record in stored:
            turns.append(fmt.open_record(key, record, fmt.turn_aad(
                tenant, subject, conversation, index, chain)))
            chain = fmt.chain_next(chain, record)
            chains.append(chain.hex())
        if chain.hex() != head_chain:
            raise SealingError("sealing.integrity_failed", "the chain does not end at the head")
        return Opened(conversation, row.root_version, meta, tuple(turns), tuple(chains), key,
                      chain)

    # --- append ------------------------------------------------------------------------------

    def append(self, tenant: str, subject: str, conversation: str, share: bytes,
               turn: dict[str, Any]) -> Opened:
        """Open (verified), add ``turn``, seal; serialised per conversation."""
        with self._lock(tenant, conversation):
            opened = self.open(tenant, subject, conversation, share)
            return self._append(tenant, subject, opened, turn)

    def _append(self, tenant: str, subject: str, opened: Opened, turn: dict[str, Any]
                ) -> Opened:
        index = len(opened.turns)
        if index >= self._max_turns:
            raise SealingError("sealing.too_large", f"{self._max_turns} turns at most")
        conversation = opened.conversation
        record = fmt.seal(opened.key, turn, fmt.turn_aad(tenant, subject, conversation, index,
                                                           opened.chain))
        chain = fmt.chain_next(opened.chain, record)
        head = self._head(opened.key, tenant, subject, conversation, index + 1, chain,
                          opened.meta)
        row, _ = self._find(tenant, subject, conversation)
        self.store.append(tenant, row.owner, conversation, index, record, head)
        return Opened(conversation, opened.root_version, opened.meta, (*opened.turns, turn),
                      (*opened.chains, chain.hex()), opened.key, chain)

    # --- list, delete ------------------------------------------------------------------------

    def list(self, tenant: str, subject: str, share: bytes) -> list[Summary]:
        """The user's conversations; one the share does not open is listed unreadable (made
        on another device, with another share), so that it can still be deleted."""
        out: list[Summary] = []
        for version in self.store.versions(tenant):
            try:
                root = self.roots.root(tenant, version)
            except SealingError:
                continue  # a retired version: what it sealed can no longer be found or read
            for row in self.store.owned(tenant, fmt.owner_pseudonym(root.key, tenant, subject)):
                if row.root_version != version:
                    continue
                key = fmt.conversation_key(root.key, share, tenant, subject, row.conversation,
                                           version)
                try:
                    head = fmt.open_record(key, row.head, fmt.head_aad(tenant, subject,
                                                                       row.conversation))
                except SealingError:
                    out.append(Summary(row.conversation, False, {}, 0))
                    continue
                meta = head.get("meta")
                turns = head.get("turns")
                out.append(Summary(row.conversation, True, meta if isinstance(meta, dict)
                                   else {}, turns if isinstance(turns, int) else 0))
        return out

    def delete(self, tenant: str, subject: str, conversation: str) -> None:
        """Delete the user's conversation (their token is enough: a conversation whose share
        was lost can be removed too); ``sealing.not_found`` if they have none of that id."""
        with self._lock(tenant, conversation):
            row, _ = self._find(tenant, subject, conversation)
            if not self.store.delete(tenant, row.owner, conversation):
                raise SealingError("sealing.not_found")
