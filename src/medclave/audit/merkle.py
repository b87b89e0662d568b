"""RFC 9162 §2.1 Merkle tree hashing, proof construction and proof verification.

Pure functions, no storage: proof construction names the subtree ranges it needs and asks a
``NodeSource`` for the stored hashes of *perfect* subtrees (``(level, index)`` covers leaves
``[index * 2**level, (index + 1) * 2**level)``), so a log that stores every perfect subtree answers
any proof for any historical size with O(log n) lookups.

The two verifiers raise :class:`medclave.errors.AuditError` and never return a bool; they check
sizes, hash lengths and proof lengths before hashing anything (the proofs are untrusted input).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from medclave.errors import AuditError

HASH_SIZE = 32
# A proof has at most one hash per tree level; tree sizes are uint64 (RFC 9162 §2.1.3.1).
MAX_TREE_SIZE = (1 << 64) - 1
MAX_PROOF_HASHES = 64
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = HASH() (RFC 9162 §2.1.1)

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

NodeKey = tuple[int, int]  # (level, index) of a perfect subtree
NodeSource = Callable[[Sequence[NodeKey]], Sequence[bytes]]


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0)) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_subtrees(start: int, stop: int) -> list[NodeKey]:
    """Perfect subtrees covering ``[start, stop)`` left to right, largest first.

    For the ranges that occur in RFC 9162 proofs (``start`` a multiple of the largest power of
    two not above ``stop - start``), MTH of the range is the right fold of these subtrees.
    """
    out: list[NodeKey] = []
    while start < stop:
        level = (stop - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        out.append((level, start >> level))
        start += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold of subtree roots, largest (leftmost) first: the root of their concatenation."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def parent_level(level: bytes | bytearray) -> bytearray:
    """The perfect parents of a level of packed 32-byte hashes (a lone last hash has none)."""
    out = bytearray()
    view = memoryview(level)
    sha256 = hashlib.sha256
    # left || right are adjacent in the packed level, so each parent is one hash call.
    for off in range(0, len(level) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE):
        h = sha256(_NODE_PREFIX)
        h.update(view[off : off + 2 * HASH_SIZE])
        out += h.digest()
    return out


def root_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 §2.1.1): the reference the tests check against."""
    level = list(leaves)
    if not level:
        return EMPTY_ROOT
    # Pairing left to right and promoting a lone last node gives the same tree as the
    # recursive split at the largest power of two (the tree is left-complete).
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose roots form PATH(index, D[size]) (RFC 9162 §2.1.3.1), leaf upwards."""
    _check_index(index, size)
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """Leaf ranges whose roots form PROOF(size1, D[size2]) (RFC 9162 §2.1.4.1)."""
    if not 0 <= size1 <= size2 <= MAX_TREE_SIZE:
        detail = f"no consistency proof from {size1} to {size2}"
        raise AuditError("audit.index_out_of_range", detail)
    if size1 in (0, size2):
        return []
    out: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, size2, size1, True
    # SUBPROOF(m, D[n], b), unrolled: each step appends the sibling subtree, so reverse at the end.
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            m -= k
            lo += k
            complete = False
    if not complete:
        out.append((lo, hi))
    out.reverse()
    return out


def hash_ranges(ranges: Sequence[tuple[int, int]], source: NodeSource) -> list[bytes]:
    """The roots of ``ranges``, fetching every perfect subtree they need in one call."""
    parts = [perfect_subtrees(lo, hi) for lo, hi in ranges]
    keys = sorted({key for part in parts for key in part})
    got = dict(zip(keys, source(keys), strict=True))
    return [fold([got[key] for key in part]) for part in parts]


def prove_inclusion(index: int, size: int, source: NodeSource) -> list[bytes]:
    return hash_ranges(inclusion_ranges(index, size), source)


def prove_consistency(size1: int, size2: int, source: NodeSource) -> list[bytes]:
    return hash_ranges(consistency_ranges(size1, size2), source)


def root_at(size: int, source: NodeSource) -> bytes:
    """MTH(D[0:size]) from stored perfect subtrees."""
    return hash_ranges([(0, size)], source)[0] if size else EMPTY_ROOT


class CompactRange:
    """The right edge of a growing tree: one root per set bit of ``size``, largest first.

    Appending a leaf yields every perfect subtree it completes, which is what a log stores.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        self._stack = list(hashes)
        if len(self._stack) != size.bit_count():
            raise AuditError("audit.node_tampered", "compact range does not match the tree size")

    @staticmethod
    def keys(size: int) -> list[NodeKey]:
        return perfect_subtrees(0, size)

    def append(self, leaf: bytes, out: list[tuple[int, int, bytes]]) -> None:
        """Add one leaf hash; append ``(level, index, hash)`` of each completed node to ``out``."""
        index, h, level = self.size, leaf, 0
        stack = self._stack
        while index & 1:
            h = node_hash(stack.pop(), h)
            index >>= 1
            level += 1
            out.append((level, index, h))
        stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        return fold(self._stack)

    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._stack)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ------------------------------------------


def _check_int(name: str, value: object, code: str) -> int:
    # bool is an int subclass; a size of True is a caller bug, not tree size 1.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TREE_SIZE:
        raise AuditError(code, f"{name} must be an integer in [0, 2^64)")
    return value


def _check_hash(name: str, value: object, code: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise AuditError(code, f"{name} must be {HASH_SIZE} bytes")
    return bytes(value)


def _check_proof(proof: object, code: str) -> list[bytes]:
    if proof is None:
        return []
    if not isinstance(proof, list | tuple) or len(proof) > MAX_PROOF_HASHES:
        raise AuditError(code, f"proof must be a list of at most {MAX_PROOF_HASHES} hashes")
    return [_check_hash(f"proof[{i}]", p, code) for i, p in enumerate(proof)]


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size <= MAX_TREE_SIZE:
        detail = f"index {index} is not in a tree of size {size}"
        raise AuditError("audit.index_out_of_range", detail)


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    Raises ``audit.inclusion_invalid``; ``proof`` may be ``None`` (JSON null) for an empty path.
    """
    code = "audit.inclusion_invalid"
    _check_int("index", index, code)
    _check_int("size", size, code)
    leaf = _check_hash("leaf hash", leaf_hash, code)
    want = _check_hash("root", root, code)
    path = _check_proof(proof, code)
    if index >= size:
        raise AuditError(code, f"index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise AuditError(code, "proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError(code, "proof is shorter than the path to the root")
    if not _equal(r, want):
        raise AuditError(code, "the proof leads to a different root")


def verify_consistency(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the one of ``size1`` with ``root1``.

    Raises ``audit.consistency_invalid``. Sizes equal: the proof must be empty and the roots
    equal. ``size1 == 0``: the proof must be empty and ``root1`` the empty-tree root (RFC 9162
    §2.1.4 defines no proof from an empty tree; every tree extends it).
    """
    code = "audit.consistency_invalid"
    _check_int("size1", size1, code)
    _check_int("size2", size2, code)
    first = _check_hash("root1", root1, code)
    second = _check_hash("root2", root2, code)
    path = _check_proof(proof, code)
    if size1 > size2:
        raise AuditError(code, f"size1 {size1} is larger than size2 {size2}")
    if size1 == size2:
        if path:
            raise AuditError(code, "equal sizes need an empty proof")
        if not _equal(first, second):
            raise AuditError(code, "equal sizes with different roots")
        return
    if size1 == 0:
        if path:
            raise AuditError(code, "a proof from the empty tree must be empty")
        if not _equal(first, EMPTY_ROOT):
            raise AuditError(code, "root1 is not the empty-tree root")
        return
    if not path:
        raise AuditError(code, "empty proof")
    if size1 & (size1 - 1) == 0:  # exact power of two: the old root is a node of the new tree
        path = [first, *path]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditError(code, "proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditError(code, "proof is shorter than needed")
    if not _equal(fr, first):
        raise AuditError(code, "the proof does not lead to root1")
    if not _equal(sr, second):
        raise AuditError(code, "the proof does not lead to root2")
