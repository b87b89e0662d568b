"""Receipts: the proof, handed to the client with each answer, that its inference was logged.

A receipt is the entry, its leaf index, an inclusion proof and the signed checkpoint the proof
leads to; optionally a consistency proof from the last checkpoint the client had seen. The
client needs only the enclave's audit key (bound into its attestation) to verify it, and a
:class:`ReceiptKeeper` to check that every checkpoint it is shown extends the ones before it,
which is what stops a log from showing different histories to different clients.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medclave.audit import merkle
from medclave.audit.entry import MAX_ENTRY_BYTES, AuditEntry, entry_bytes, parse_entry
from medclave.audit.note import (
    MAX_NOTE_BYTES,
    Checkpoint,
    Cosignature,
    NoteVerifier,
    verify_checkpoint,
)
from medclave.errors import AuditError
from medclave.util.files import write_atomic

MEDIA_TYPE = "application/vnd.medclave.audit-receipt+json"
MAX_RECEIPT_BYTES = MAX_ENTRY_BYTES + MAX_NOTE_BYTES + 16 * 1024

B64Hash = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]
ProofList = Annotated[list[B64Hash], Field(max_length=merkle.MAX_PROOF_HASHES)]
Size = Annotated[int, Field(ge=0, le=merkle.MAX_TREE_SIZE)]

ConsistencyFetcher = Callable[[int, int], Sequence[bytes]]


def encode_proof(proof: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in proof]


def decode_proof(proof: Sequence[str]) -> list[bytes]:
    try:
        out = [base64.b64decode(h, validate=True) for h in proof]
    except (binascii.Error, ValueError) as exc:
        raise AuditError("audit.receipt_invalid", "a proof hash is not base64") from exc
    if encode_proof(out) != list(proof):  # spare bits set: one text per hash
        raise AuditError("audit.receipt_invalid", "a proof hash is not canonical base64")
    return out


class ConsistencyProof(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    size1: Size
    proof: ProofList


class Receipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = 1
    entry: dict[str, Any]
    index: Size
    proof: ProofList
    checkpoint: str = Field(max_length=MAX_NOTE_BYTES)
    consistency: ConsistencyProof | None = None

    @classmethod
    def build(
        cls,
        *,
        entry: bytes,
        index: int,
        proof: Sequence[bytes],
        checkpoint: bytes,
        consistency: ConsistencyProof | None = None,
    ) -> Receipt:
        return cls(
            entry=json.loads(entry),
            index=index,
            proof=encode_proof(proof),
            checkpoint=checkpoint.decode(),
            consistency=consistency,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Receipt:
        if len(data) > MAX_RECEIPT_BYTES:
            raise AuditError("audit.receipt_invalid", f"a receipt is at most {MAX_RECEIPT_BYTES} B")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            detail = f"not a receipt: {exc.error_count()} errors"
            raise AuditError("audit.receipt_invalid", detail) from exc


@dataclass(frozen=True)
class VerifiedReceipt:
    entry: AuditEntry
    index: int
    checkpoint: Checkpoint
    cosignatures: tuple[Cosignature, ...]
    receipt: Receipt


def verify_receipt(
    receipt: Receipt | bytes,
    log_key: NoteVerifier,
    *,
    witnesses: Sequence[NoteVerifier] = (),
    quorum: int = 0,
) -> VerifiedReceipt:
    """Check the checkpoint signature (and cosignatures), then the entry's inclusion under it.

    Raises ``audit.receipt_invalid`` (shape), ``audit.checkpoint_signature_invalid``,
    ``audit.cosignature_invalid``, ``audit.entry_invalid`` or ``audit.inclusion_invalid``.
    """
    if not isinstance(receipt, Receipt):
        receipt = Receipt.from_json(receipt)
    opened = verify_checkpoint(
        receipt.checkpoint.encode(), log_key, witnesses=witnesses, quorum=quorum
    )
    checkpoint = opened.checkpoint
    data = entry_bytes(receipt.entry)
    entry = parse_entry(data)
    merkle.verify_inclusion(
        merkle.leaf_hash(data),
        receipt.index,
        checkpoint.size,
        decode_proof(receipt.proof),
        checkpoint.root,
    )
    return VerifiedReceipt(entry, receipt.index, checkpoint, opened.cosignatures, receipt)


class ReceiptKeeper:
    """Verifies receipts and checks every checkpoint seen against its neighbours in size.

    Checkpoints of one size must have one root; between sizes a consistency proof must hold,
    taken from the receipt (``consistency``, built from :attr:`latest_size`, which a client
    sends with its request) or asked of ``fetch_consistency``. No proof, no acceptance.
    With a ``directory``, kept receipts are written there and the latest checkpoint is
    remembered across restarts (re-verified on load).
    """

    _CHECKPOINT = "latest-checkpoint"

    def __init__(
        self,
        log_key: NoteVerifier,
        *,
        witnesses: Sequence[NoteVerifier] = (),
        quorum: int = 0,
        directory: Path | None = None,
        fetch_consistency: ConsistencyFetcher | None = None,
    ) -> None:
        self._key = log_key
        self._witnesses = tuple(witnesses)
        self._quorum = quorum
        self._dir = directory
        self._fetch = fetch_consistency
        self._sizes: list[int] = []
        self._roots: dict[int, bytes] = {}
        self._latest_note: bytes | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            saved = directory / self._CHECKPOINT
            if saved.is_file():
                note = saved.read_bytes()
                self._remember(verify_checkpoint(note, log_key).checkpoint, note)

    @property
    def latest_size(self) -> int | None:
        return self._sizes[-1] if self._sizes else None

    def accept(self, receipt: Receipt | bytes, *, keep: bool = False) -> VerifiedReceipt:
        """Verify ``receipt`` and its checkpoint's consistency with those seen; ``keep`` also
        stores it in the directory."""
        if keep and self._dir is None:
            raise AuditError("audit.receipt_invalid", "keeping receipts needs a directory")
        verified = verify_receipt(
            receipt, self._key, witnesses=self._witnesses, quorum=self._quorum
        )
        cp = verified.checkpoint
        self._check_consistent(cp, verified.receipt.consistency)
        grew = self._remember(cp, verified.receipt.checkpoint.encode())
        if self._dir is not None and grew and self._latest_note is not None:
            write_atomic(self._dir / self._CHECKPOINT, self._latest_note)
        if keep and self._dir is not None:
            self._keep(self._dir, verified)
        return verified

    def _check_consistent(self, cp: Checkpoint, offered: ConsistencyProof | None) -> None:
        code = "audit.consistency_invalid"
        if cp.size in self._roots:
            if self._roots[cp.size] != cp.root:
                raise AuditError(code, f"two different roots for tree size {cp.size}")
            return
        pos = bisect.bisect_left(self._sizes, cp.size)
        if pos > 0:  # an earlier checkpoint must be a prefix of this one
            size1 = self._sizes[pos - 1]
            proof = self._proof(size1, cp.size, offered)
            merkle.verify_consistency(size1, cp.size, proof, self._roots[size1], cp.root)
        if pos < len(self._sizes):  # and this one a prefix of any later one already seen
            size2 = self._sizes[pos]
            proof = self._proof(cp.size, size2, None)
            merkle.verify_consistency(cp.size, size2, proof, cp.root, self._roots[size2])

    def _proof(self, size1: int, size2: int, offered: ConsistencyProof | None) -> list[bytes]:
        if offered is not None and offered.size1 == size1:
            return decode_proof(offered.proof)
        if self._fetch is None:
            raise AuditError(
                "audit.consistency_invalid", f"no consistency proof from {size1} to {size2}"
            )
        return list(self._fetch(size1, size2))

    def _remember(self, cp: Checkpoint, note: bytes) -> bool:
        """Record ``cp``; True when it is a new latest checkpoint."""
        if cp.size in self._roots:
            return False
        bisect.insort(self._sizes, cp.size)
        self._roots[cp.size] = cp.root
        if cp.size != self._sizes[-1]:
            return False
        self._latest_note = note
        return True

    @staticmethod
    def _keep(directory: Path, verified: VerifiedReceipt) -> None:
        name = f"receipt-{verified.index:012d}-{verified.checkpoint.size}.json"
        write_atomic(directory / name, verified.receipt.to_json())

