"""The federation's audit trail: one Merkle log entry per pipeline stage.

Entries go into the federation's RFC 9162 log (``audit.AuditLog`` over SQLite, checkpoints signed
by the federation's log key), as canonical JSON with a ``kind``:

==================  ===============================================================
``ingest``          a site's sealed data: its plaintext SHA-256, the admission evidence
``preprocessing``   the preprocessing and training code: source digest, measurement
``round-config``    each round's training configuration, the aggregator's evidence
``update``          each accepted update: site, round, update digest, evidence digest
``dropped``         each refused reply: site, round, refusal code
``aggregation``     each round's aggregate: parameter digest, sites counted, (ε, δ) so far
``evaluation``      the final model's federated evaluation
``final-model``     the final model's digest, and the leaf hash of every ``aggregation``
==================  ===============================================================

So a reviewer with the log and its key (``medclave audit verify``) can walk from the published
model's digest to every round that produced it, each update's evidence, and each site's data
commitment. Entries hold digests and codes, never rows.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from medclave.audit.log import AuditLog
from medclave.audit.merkle import leaf_hash
from medclave.audit.note import NoteSigner
from medclave.crypto.canonical import canonical_json
from medclave.fl.evidence import utc_now
from medclave.util.files import create_secret_file

LOG_FILE = "audit.sqlite3"
KEY_FILE = "log-key.seed"


def origin_for(federation: str) -> str:
    return f"medclave.fl/{federation}"


def log_signer(root: Path, federation: str) -> NoteSigner:
    """The federation's log key, from a 0600 seed file created on first use (on sim; in a TEE
    deployment the aggregator's enclave holds it and its evidence binds the public half)."""
    path = root / KEY_FILE
    if not path.exists():
        create_secret_file(path, os.urandom(32))
    return NoteSigner.from_seed(origin_for(federation), path.read_bytes())


class Trail:
    """Appends stage entries to the federation log; ``close`` signs a checkpoint."""

    def __init__(self, root: Path, federation: str, run: str) -> None:
        self.federation = federation
        self.run = run
        self._log = AuditLog.open_sqlite(root / LOG_FILE, origin=origin_for(federation),
                                         signer=log_signer(root, federation))

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one entry; returns ``{"index", "leaf"}`` (leaf: RFC 9162 leaf hash, hex)."""
        entry = canonical_json({"kind": kind, "federation": self.federation, "run": self.run,
                                "time": utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"), **fields})
        index = self._log.append(entry)
        return {"index": index, "leaf": leaf_hash(entry).hex()}

    def close(self) -> None:
        self._log.checkpoint()
        self._log.close()


def params_digest(arrays: list[Any]) -> str:
    """SHA-256 over each array's dtype, shape and bytes, in order."""
    h = hashlib.sha256(b"medclave-fl-params-v1")
    for a in arrays:
        header = f"{a.dtype.str}|{','.join(map(str, a.shape))}".encode()
        h.update(len(header).to_bytes(4, "big") + header)
        data = a.tobytes()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()
