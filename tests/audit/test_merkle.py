"""RFC 9162 proofs: the transparency-dev vectors, and proofs built here checked by the verifiers."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.audit import merkle
from medclave.errors import AuditError


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _cases(root: Path, kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((root / "testdata" / kind).rglob("*.json"))
    assert files, f"no {kind} vectors"
    return [(str(f.relative_to(root)), json.loads(f.read_text())) for f in files]


def test_inclusion_vectors(tlog_vectors: Path) -> None:
    accepted = refused = 0
    for name, case in _cases(tlog_vectors, "inclusion"):
        args = (
            _b64(case["leafHash"]),
            case["leafIdx"],
            case["treeSize"],
            [_b64(p) for p in case["proof"] or []],
            _b64(case["root"]),
        )
        if case["wantErr"]:
            with pytest.raises(AuditError) as err:
                merkle.verify_inclusion(*args)
            assert err.value.code == "audit.inclusion_invalid", name
            refused += 1
        else:
            merkle.verify_inclusion(*args)
            accepted += 1
    assert accepted >= 5 and refused >= 50


def test_consistency_vectors(tlog_vectors: Path) -> None:
    accepted = refused = 0
    for name, case in _cases(tlog_vectors, "consistency"):
        args = (
            case["size1"],
            case["size2"],
            [_b64(p) for p in case["proof"] or []],
            _b64(case["root1"]),
            _b64(case["root2"]),
        )
        if case["wantErr"]:
            with pytest.raises(AuditError) as err:
                merkle.verify_consistency(*args)
            assert err.value.code == "audit.consistency_invalid", name
            refused += 1
        else:
            merkle.verify_consistency(*args)
            accepted += 1
    assert accepted >= 5 and refused >= 50


def test_null_proof_accepted_as_empty(tlog_vectors: Path) -> None:
    # Go's JSON writes an empty proof as null; the vectors do too (size-1 happy paths).
    leaf = merkle.leaf_hash(b"x")
    assert leaf == hashlib.sha256(b"\x00x").digest()  # RFC 6962 §2.1: MTH({d0}) = SHA-256(0x00 || d0)
    merkle.verify_inclusion(leaf, 0, 1, None, leaf)  # type: ignore[arg-type]
    # null is read as the empty path, not as "no check": a wrong root, a wrong leaf, or a tree
    # with more than one leaf (whose path is not empty) is still refused.
    other = merkle.leaf_hash(b"y")
    for args in ((leaf, 0, 1, None, other), (other, 0, 1, None, leaf), (leaf, 0, 2, None, leaf),
                 (leaf, 1, 2, None, leaf)):
        with pytest.raises(AuditError) as err:
            merkle.verify_inclusion(*args)  # type: ignore[arg-type]
        assert err.value.code == "audit.inclusion_invalid"
    # The vectors' own null-proof cases: each verifies with null and with [] alike.
    cases = [c for _, c in _cases(tlog_vectors, "inclusion") if not c["wantErr"] and not c["proof"]]
    assert cases
    for case in cases:
        for empty in (None, []):
            merkle.verify_inclusion(_b64(case["leafHash"]), case["leafIdx"], case["treeSize"],
                                    empty, _b64(case["root"]))


def _source(nodes: dict[tuple[int, int], bytes]) -> merkle.NodeSource:
    return lambda keys: [nodes[k] for k in keys]


def _tree(n: int) -> tuple[list[bytes], dict[tuple[int, int], bytes]]:
    """Leaves and every perfect subtree of a tree of n leaves, built by the compact range."""
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    nodes = {(0, i): h for i, h in enumerate(leaves)}
    cr = merkle.CompactRange()
    out: list[tuple[int, int, bytes]] = []
    for h in leaves:
        cr.append(h, out)
    nodes.update({(lvl, idx): h for lvl, idx, h in out})
    return leaves, nodes


def test_compact_range_matches_reference_root() -> None:
    for n in range(0, 70):
        leaves, nodes = _tree(n)
        assert merkle.root_at(n, _source(nodes)) == merkle.root_from_leaves(leaves)
        cr = merkle.CompactRange(n, [nodes[k] for k in merkle.CompactRange.keys(n)])
        assert cr.root() == merkle.root_from_leaves(leaves)


def test_generated_proofs_verify_and_fail_when_changed() -> None:
    leaves, nodes = _tree(40)
    source = _source(nodes)
    for size in range(1, 41):
        root = merkle.root_from_leaves(leaves[:size])
        for index in range(size):
            proof = merkle.prove_inclusion(index, size, source)
            merkle.verify_inclusion(leaves[index], index, size, proof, root)
            with pytest.raises(AuditError):
                merkle.verify_inclusion(leaves[index], index, size, proof, merkle.leaf_hash(b"r"))
            if proof:
                bad = [*proof]
                bad[-1] = bytes(32)
                with pytest.raises(AuditError):
                    merkle.verify_inclusion(leaves[index], index, size, bad, root)
        for size1 in range(0, size + 1):
            root1 = merkle.root_from_leaves(leaves[:size1])
            proof = merkle.prove_consistency(size1, size, source)
            merkle.verify_consistency(size1, size, proof, root1, root)
            if proof:
                with pytest.raises(AuditError):
                    merkle.verify_consistency(size1, size, proof[:-1], root1, root)
                with pytest.raises(AuditError):
                    merkle.verify_consistency(size1, size, [*proof, proof[0]], root1, root)


def test_edge_cases_refused() -> None:
    h = merkle.leaf_hash(b"a")
    cases = [
        lambda: merkle.verify_inclusion(h, 0, 0, [], h),
        lambda: merkle.verify_inclusion(h, 1, 1, [], h),
        lambda: merkle.verify_inclusion(h, -1, 1, [], h),
        lambda: merkle.verify_inclusion(h, True, 2, [h], h),  # bool is not an index
        lambda: merkle.verify_inclusion(h[:31], 0, 1, [], h[:31]),
        lambda: merkle.verify_inclusion(h, 0, 1 << 64, [], h),
        lambda: merkle.verify_inclusion(h, 0, 2, [h] * 65, h),
        lambda: merkle.verify_consistency(2, 1, [h], h, h),
        lambda: merkle.verify_consistency(1, 1, [h], h, h),
        lambda: merkle.verify_consistency(1, 1, [], h, merkle.leaf_hash(b"b")),
        lambda: merkle.verify_consistency(0, 1, [], h, h),  # root1 must be the empty root
        lambda: merkle.verify_consistency(1, 2, [], h, h),
    ]
    for case in cases:
        with pytest.raises(AuditError):
            case()
    merkle.verify_consistency(0, 1, [], merkle.EMPTY_ROOT, h)


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(-2, 40),
    size=st.integers(-2, 40),
    proof=st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    leaf=st.binary(min_size=0, max_size=40),
    root=st.binary(min_size=0, max_size=40),
)
def test_random_inclusion_input_never_verifies(
    index: int, size: int, proof: list[bytes], leaf: bytes, root: bytes
) -> None:
    with pytest.raises(AuditError):
        merkle.verify_inclusion(leaf, index, size, proof, root)


@settings(max_examples=200, deadline=None)
@given(
    size1=st.integers(1, 40),
    extra=st.integers(1, 40),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=8),
    root1=st.binary(min_size=32, max_size=32),
    root2=st.binary(min_size=32, max_size=32),
)
def test_random_consistency_input_never_verifies(
    size1: int, extra: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    with pytest.raises(AuditError):
        merkle.verify_consistency(size1, size1 + extra, proof, root1, root2)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_mutated_generated_proof_refused(size: int, data: st.DataObject) -> None:
    leaves, nodes = _tree(size)
    source = _source(nodes)
    index = data.draw(st.integers(0, size - 1))
    proof = merkle.prove_inclusion(index, size, source)
    root = merkle.root_from_leaves(leaves)
    merkle.verify_inclusion(leaves[index], index, size, proof, root)
    if not proof:
        return
    i = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    bad = bytearray(proof[i])
    bad[bit // 8] ^= 1 << (bit % 8)
    mutated = [*proof]
    mutated[i] = bytes(bad)
    with pytest.raises(AuditError):
        merkle.verify_inclusion(leaves[index], index, size, mutated, root)
