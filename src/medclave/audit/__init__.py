"""Tamper-evident audit log: RFC 9162 Merkle tree, C2SP checkpoints, receipts, FHIR export.

Layer 3: imports only ``errors``, ``crypto`` and the standard library (``sqlite3`` only inside
``store``, behind :class:`~medclave.audit.store.LogStore`).
"""

from medclave.audit.entry import (
    AttestationSummary,
    AuditEntry,
    Authorization,
    Params,
    commit,
    generate_commitment_key,
    open_commitment,
    parse_commitment_key,
    parse_entry,
    pseudonym,
)
from medclave.audit.log import Appended, AuditLog
from medclave.audit.merkle import verify_consistency, verify_inclusion
from medclave.audit.note import Checkpoint, NoteSigner, NoteVerifier, verify_checkpoint
from medclave.audit.receipt import Receipt, ReceiptKeeper, VerifiedReceipt, verify_receipt
from medclave.audit.store import LogStore, MemoryLogStore, SqliteLogStore
from medclave.audit.verify import LogReport, inspect_log, verify_log

__all__ = [
    "Appended",
    "AttestationSummary",
    "AuditEntry",
    "AuditLog",
    "Authorization",
    "Checkpoint",
    "LogReport",
    "LogStore",
    "MemoryLogStore",
    "NoteSigner",
    "NoteVerifier",
    "Params",
    "Receipt",
    "ReceiptKeeper",
    "SqliteLogStore",
    "VerifiedReceipt",
    "commit",
    "generate_commitment_key",
    "inspect_log",
    "open_commitment",
    "parse_commitment_key",
    "parse_entry",
    "pseudonym",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
    "verify_receipt",
]
