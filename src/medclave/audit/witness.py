"""A witness for another deployment's log (c2sp.org/tlog-witness semantics, file-backed).

A witness cosigns a checkpoint only after checking the log's signature and that the checkpoint
is consistent with the last one it cosigned for that origin; it records the new size and root
(fsynced, atomically) before it releases the cosignature, so it can never be made to vouch for
two forks of one log. Clients that require cosignatures from a quorum of independent witnesses
are safe from a log that shows different histories to different people.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from medclave.audit import merkle
from medclave.audit.note import NoteSigner, NoteVerifier, cosign, verify_checkpoint
from medclave.errors import AuditError
from medclave.util.files import write_atomic

MAX_STATE_BYTES = 1 << 20


@dataclass(frozen=True)
class Witnessed:
    size: int
    root: bytes


def load_state(path: Path) -> dict[str, Witnessed]:
    """``origin -> last cosigned (size, root)``; a missing file is an empty state."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    try:
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError("state file too large")
        doc = json.loads(raw)
        if doc.get("v") != 1 or not isinstance(doc.get("logs"), dict):
            raise ValueError("not a v1 witness state")
        out = {}
        for origin, item in doc["logs"].items():
            size, root = item["size"], base64.b64decode(item["root"], validate=True)
            if not isinstance(size, int) or size < 0 or len(root) != merkle.HASH_SIZE:
                raise ValueError(f"bad record for {origin}")
            out[str(origin)] = Witnessed(size, root)
        return out
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise AuditError("audit.checkpoint_invalid", f"witness state unreadable: {exc}") from exc


def _save_state(path: Path, state: dict[str, Witnessed]) -> None:
    doc = {
        "v": 1,
        "logs": {
            o: {"size": w.size, "root": base64.b64encode(w.root).decode()}
            for o, w in sorted(state.items())
        },
    }
    write_atomic(path, json.dumps(doc, indent=1).encode())


def witness_checkpoint(
    note: bytes,
    log_key: NoteVerifier,
    proof: Sequence[bytes],
    *,
    signer: NoteSigner,
    state_path: Path,
    now: datetime,
) -> bytes:
    """Verify, check consistency with the last cosigned checkpoint, record, then cosign.

    ``proof`` is the consistency proof from the last size this witness cosigned for the log
    (empty for a log seen for the first time). Returns the note with the cosignature added.
    """
    checkpoint = verify_checkpoint(note, log_key).checkpoint
    lock_path = state_path.with_name(state_path.name + ".lock")
    with open(lock_path, "a") as lock:
        # One cosigner at a time per state file: two concurrent calls must not both
        # extend the same old size to two different new trees.
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(state_path)
        prev = state.get(checkpoint.origin, Witnessed(0, merkle.EMPTY_ROOT))
        if checkpoint.size < prev.size:
            raise AuditError(
                "audit.consistency_invalid",
                f"checkpoint {checkpoint.size} is older than the cosigned {prev.size}",
            )
        merkle.verify_consistency(prev.size, checkpoint.size, list(proof), prev.root,
                                  checkpoint.root)
        state[checkpoint.origin] = Witnessed(checkpoint.size, checkpoint.root)
        _save_state(state_path, state)
    return cosign(note, signer, int(now.timestamp()))
