"""Full verification of a stored log: what an auditor runs, offline, with only the log key.

Nothing the store says is taken on trust. The tree is recomputed from the entries; every stored
checkpoint must carry a valid signature by the trusted key, and the recomputed root at its size
must equal the signed root; consecutive checkpoints must be consistent; every stored node must
equal its recomputed value. Each problem becomes a :class:`Finding` with a code and a place:

- ``audit.checkpoint_signature_invalid`` / ``audit.checkpoint_invalid``: checkpoint at size N;
- ``audit.entry_missing``: an index with no entry below the log or a checkpoint size;
- ``audit.entry_tampered``: entries that no longer hash to the signed root (localized to the
  smallest recomputed subtree that differs from the stored one);
- ``audit.node_tampered``: a stored node (or leaf hash) that differs from the recomputed one
  while the entries agree with every signed root;
- ``audit.consistency_invalid``: two signed checkpoints that are not one history, or a log
  that diverges from a checkpoint the auditor brought (``trusted``);
- ``audit.rollback``: a log shorter than a checkpoint the auditor brought.

What the log holds can only prove the log consistent with itself: whoever can write the file
can truncate or empty it together with its checkpoints and nodes, and what remains still
verifies. Rollback is caught only against a checkpoint kept outside the log (a receipt's, a
witness's): ``trusted`` checkpoints are checked by an RFC 9162 §2.1.4 consistency proof from
their size to the log's, computed over the recomputed tree.

Memory is 64 bytes per entry (one 32-byte hash per node, levels as packed ``bytearray``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from medclave.audit import merkle
from medclave.audit.entry import parse_entry
from medclave.audit.note import Checkpoint, NoteVerifier, VerifiedCheckpoint, verify_checkpoint
from medclave.audit.receipt import Receipt
from medclave.audit.store import LogStore
from medclave.errors import AuditError, MedclaveError

_H = merkle.HASH_SIZE


@dataclass(frozen=True)
class Finding:
    code: str
    where: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "where": self.where, "detail": self.detail}


@dataclass(frozen=True)
class LogReport:
    origin: str
    size: int
    root: bytes
    checkpoints: int
    latest_checkpoint: int | None
    entries_parsed: bool
    findings: tuple[Finding, ...] = ()
    truncated: bool = False
    trusted: tuple[int, ...] = ()  # sizes of the outside checkpoints the log was checked against

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def unsigned_entries(self) -> int:
        """Entries after the latest signed checkpoint: nothing vouches for them yet."""
        return self.size - (self.latest_checkpoint or 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "origin": self.origin,
            "size": self.size,
            "root": self.root.hex(),
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "unsigned_entries": self.unsigned_entries,
            "entries_parsed": self.entries_parsed,
            "findings": [f.to_dict() for f in self.findings],
            "truncated": self.truncated,
            "trusted_checkpoints": list(self.trusted),
        }


@dataclass
class _Findings:
    limit: int
    items: list[Finding] = field(default_factory=list)
    truncated: bool = False

    def add(self, code: str, where: str, detail: str) -> None:
        if any(f.code == code and f.where == where for f in self.items[-8:]):
            return  # the same place found twice by two checks
        if len(self.items) < self.limit:
            self.items.append(Finding(code, where, detail))
        else:
            self.truncated = True


class _Tree:
    """Every perfect subtree of the recomputed tree, one packed bytearray per level."""

    def __init__(self, leaves: bytearray) -> None:
        self.levels = [leaves]
        level = leaves
        while len(level) >= 2 * _H:
            level = merkle.parent_level(level)
            self.levels.append(level)

    def get(self, level: int, index: int) -> bytes:
        return bytes(self.levels[level][index * _H : (index + 1) * _H])

    def source(self, keys: Sequence[merkle.NodeKey]) -> list[bytes]:
        return [self.get(level, index) for level, index in keys]

    def root(self, size: int) -> bytes:
        return merkle.root_at(size, self.source)


def inspect_log(
    store: LogStore,
    log_key: NoteVerifier,
    *,
    origin: str | None = None,
    parse_entries: bool = True,
    max_findings: int = 100,
    trusted: Sequence[Checkpoint] = (),
) -> LogReport:
    """Check everything and return every finding (up to ``max_findings``); never raises on
    tampering. ``parse_entries`` also requires each entry to be a canonical v1 AuditEntry.
    ``trusted``: checkpoints the auditor already holds, signatures checked (see
    :func:`open_trusted`); the log must extend each of them."""
    origin = log_key.name if origin is None else origin
    found = _Findings(max_findings)
    size = store.size()

    signed = _checkpoints(store, log_key, origin, size, found)
    if size and not signed and not found.items:
        found.add("audit.checkpoint_invalid", "log", "entries but no signed checkpoint")

    leaves = bytearray(size * _H)
    stored_leaves = bytearray(size * _H)
    expected = 0
    unparsed: list[tuple[int, str]] = []
    for index, data, leaf in store.entries():
        if index != expected:
            found.add("audit.entry_missing", f"entries {expected}..{index - 1}", "no such rows")
        h = merkle.leaf_hash(data)
        leaves[index * _H : (index + 1) * _H] = h
        stored_leaves[index * _H : (index + 1) * _H] = leaf[:_H].ljust(_H, b"\0")
        if parse_entries:
            try:
                parse_entry(data)
            except MedclaveError as exc:
                if len(unparsed) < max_findings:
                    unparsed.append((index, exc.detail))
        expected = index + 1
    tree = _Tree(leaves)

    entries_ok = _roots(tree, signed, stored_leaves, store, found)
    _consistency(tree, signed, found)
    _extends(tree, size, trusted, found)
    _nodes(tree, stored_leaves, store, size, entries_ok, found)
    # Last: an entry that hashes right but does not parse is the writer's bug, not tampering,
    # and one already reported as tampered needs no second finding.
    flagged = {f.where for f in found.items}
    for index, detail in unparsed:
        if f"entry {index}" not in flagged:
            found.add("audit.entry_invalid", f"entry {index}", detail)

    latest = signed[-1][0] if signed else None
    return LogReport(
        origin=origin,
        size=size,
        root=tree.root(size),
        checkpoints=len(signed),
        latest_checkpoint=latest,
        entries_parsed=parse_entries,
        findings=tuple(found.items),
        truncated=found.truncated,
        trusted=tuple(cp.size for cp in trusted),
    )


def verify_log(
    store: LogStore,
    log_key: NoteVerifier,
    *,
    origin: str | None = None,
    parse_entries: bool = True,
    trusted: Sequence[Checkpoint] = (),
) -> LogReport:
    """:func:`inspect_log`, raising the first finding as an :class:`AuditError` (with ``where``
    and the full ``report`` in its context); returns the report when the log is intact."""
    report = inspect_log(store, log_key, origin=origin, parse_entries=parse_entries,
                         trusted=trusted)
    if report.findings:
        first = report.findings[0]
        raise AuditError(first.code, f"{first.where}: {first.detail}", where=first.where,
                         report=report)
    return report


def open_trusted(
    data: bytes,
    log_key: NoteVerifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[NoteVerifier] = (),
    quorum: int = 0,
) -> VerifiedCheckpoint:
    """A checkpoint an auditor brings: a C2SP signed note (as a witness returns it), or a
    receipt (JSON) whose checkpoint is taken. Its signature by ``log_key`` (and ``quorum`` of
    the ``witnesses``' cosignatures) must verify; only then are its size and root trusted."""
    if data.lstrip()[:1] == b"{":
        data = Receipt.from_json(data).checkpoint.encode()
    return verify_checkpoint(data, log_key, origin=origin, witnesses=witnesses, quorum=quorum)


def _checkpoints(
    store: LogStore, key: NoteVerifier, origin: str, size: int, found: _Findings
) -> list[tuple[int, bytes]]:
    """Signed (size, root) pairs of the checkpoints that verify, in size order."""
    out = []
    for stored_size, note in store.checkpoints():
        where = f"checkpoint {stored_size}"
        try:
            cp = verify_checkpoint(note, key, origin=origin).checkpoint
        except AuditError as exc:
            found.add(exc.code, where, exc.detail)
            continue
        if cp.size != stored_size:
            found.add("audit.checkpoint_invalid", where, f"the note is for size {cp.size}")
            continue
        if cp.size > size:
            found.add("audit.entry_missing", f"entries {size}..{cp.size - 1}",
                      f"signed checkpoint {cp.size} covers entries the log no longer has")
            continue
        out.append((cp.size, cp.root))
    return out


def _first_difference(
    tree: _Tree, stored_leaves: bytearray, store: LogStore, lo: int, hi: int
) -> str:
    """Where, in entries ``[lo, hi)``, the recomputed tree first departs from the stored one;
    the whole range when the stored hashes were rewritten to match (only the signature knew)."""
    if tree.levels[0][lo * _H : hi * _H] != stored_leaves[lo * _H : hi * _H]:
        for off in range(lo * _H, hi * _H, _H):
            if tree.levels[0][off : off + _H] != stored_leaves[off : off + _H]:
                return f"entry {off // _H}"
    for level in range(1, len(tree.levels)):
        for index, h in store.level(level):
            first, last = index << level, ((index + 1) << level) - 1
            if first >= lo and last < hi and tree.get(level, index) != h:
                return f"entries {first}..{last}"
    return f"entries {lo}..{hi - 1}"


def _roots(
    tree: _Tree,
    signed: list[tuple[int, bytes]],
    stored_leaves: bytearray,
    store: LogStore,
    found: _Findings,
) -> bool:
    """Each signed root against the recomputed one; False if any differ (entries changed)."""
    good = 0  # the largest size whose signed root still matches
    for cp_size, root in signed:
        if tree.root(cp_size) == root:
            good = cp_size
            continue
        where = _first_difference(tree, stored_leaves, store, good, cp_size)
        found.add("audit.entry_tampered", where,
                  f"entries no longer hash to the root signed at size {cp_size}")
        return False  # the first bad checkpoint localizes it; later ones repeat the news
    return True


def _consistency(tree: _Tree, signed: list[tuple[int, bytes]], found: _Findings) -> None:
    for (s1, r1), (s2, r2) in itertools.pairwise(signed):
        try:
            merkle.verify_consistency(s1, s2, merkle.prove_consistency(s1, s2, tree.source), r1, r2)
        except AuditError as exc:
            found.add(exc.code, f"checkpoints {s1} and {s2}", exc.detail)


def _extends(tree: _Tree, size: int, trusted: Sequence[Checkpoint], found: _Findings) -> None:
    """The log's tree must extend each trusted checkpoint: at least as large, and the RFC 9162
    §2.1.4 consistency proof from its size to the log's leads to its root and to the log's."""
    root = tree.root(size)
    for cp in trusted:
        where = f"trusted checkpoint {cp.size}"
        if cp.size > size:
            found.add("audit.rollback", where,
                      f"the log has {size} entries; a checkpoint it signed covers {cp.size}")
            continue
        try:
            proof = merkle.prove_consistency(cp.size, size, tree.source)
            merkle.verify_consistency(cp.size, size, proof, cp.root, root)
        except AuditError as exc:
            found.add(exc.code, where, f"the log diverges from the checkpoint: {exc.detail}")


def _nodes(
    tree: _Tree,
    stored_leaves: bytearray,
    store: LogStore,
    size: int,
    entries_ok: bool,
    found: _Findings,
) -> None:
    """Stored nodes against recomputed ones. A leaf hash that differs is the node's fault when
    the entries match every signed root, the entry's otherwise."""
    leaf_code = "audit.node_tampered" if entries_ok else "audit.entry_tampered"
    if tree.levels[0] != stored_leaves:  # one comparison in the usual case, then find where
        for off in range(0, size * _H, _H):
            if tree.levels[0][off : off + _H] != stored_leaves[off : off + _H]:
                found.add(leaf_code, f"entry {off // _H}",
                          "stored leaf hash differs from the entry's")
    for level in range(1, len(tree.levels)):
        want = size >> level
        expected = 0
        for index, h in store.level(level):
            if index >= want:
                found.add("audit.node_tampered", f"node ({level}, {index})", "beyond the tree")
                continue
            if index != expected:
                found.add("audit.node_tampered", f"node ({level}, {expected})", "missing")
            if tree.get(level, index) != h:
                code = "audit.node_tampered" if entries_ok else "audit.entry_tampered"
                found.add(code, f"node ({level}, {index})", "differs from the recomputed node")
            expected = index + 1
        if expected < want:
            found.add("audit.node_tampered", f"node ({level}, {expected})", "missing")
