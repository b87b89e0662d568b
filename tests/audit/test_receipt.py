"""Receipts: verified offline with the log key; the keeper catches a log that forks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medclave.audit.log import AuditLog
from medclave.audit.note import NoteSigner
from medclave.audit.receipt import Receipt, ReceiptKeeper, verify_receipt
from medclave.audit.store import MemoryLogStore
from medclave.errors import AuditError, MedclaveError
from tests.audit._builders import ORIGIN, make_entry
from tests.conftest import flip


def _log(signer: NoteSigner, n: int, *, start: int = 0) -> AuditLog:
    log = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=signer)
    for i in range(start, start + n, 4):
        log.append_batch([make_entry(j) for j in range(i, min(i + 4, start + n))])
    return log


def test_receipt_verifies_and_each_part_is_bound(log_signer: NoteSigner) -> None:
    log = _log(log_signer, 13)
    receipt = log.receipt(6)
    got = verify_receipt(receipt.to_json(), log_signer.verifier)
    assert got.index == 6 and got.checkpoint.size == 13
    assert got.entry == make_entry(6)

    changed_entry = receipt.model_copy(
        update={"entry": {**receipt.entry, "break_glass": True}})
    wrong_index = receipt.model_copy(update={"index": 7})
    other_proof = receipt.model_copy(update={"proof": log.receipt(5).proof})
    stranger = NoteSigner.generate(ORIGIN)
    for bad, code in (
        (changed_entry, "audit.inclusion_invalid"),
        (wrong_index, "audit.inclusion_invalid"),
        (other_proof, "audit.inclusion_invalid"),
    ):
        with pytest.raises(AuditError) as err:
            verify_receipt(bad, log_signer.verifier)
        assert err.value.code == code
    with pytest.raises(AuditError) as err:
        verify_receipt(receipt, stranger.verifier)
    assert err.value.code == "audit.checkpoint_signature_invalid"


def test_every_flipped_byte_of_a_receipt_is_refused(log_signer: NoteSigner) -> None:
    data = _log(log_signer, 9).receipt(4).to_json()
    verify_receipt(data, log_signer.verifier)
    for offset in range(len(data)):
        with pytest.raises(MedclaveError):
            verify_receipt(flip(data, offset), log_signer.verifier)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_not_a_receipt(data: bytes) -> None:
    key = NoteSigner.generate(ORIGIN).verifier
    with pytest.raises(MedclaveError):
        verify_receipt(data, key)


def test_oversized_receipt_refused(log_signer: NoteSigner) -> None:
    with pytest.raises(AuditError) as err:
        verify_receipt(b"{" + b" " * 200_000 + b"}", log_signer.verifier)
    assert err.value.code == "audit.receipt_invalid"


def test_keeper_follows_a_growing_log(log_signer: NoteSigner, tmp_path: Path) -> None:
    log = _log(log_signer, 8)
    keeper = ReceiptKeeper(log_signer.verifier, directory=tmp_path)
    keeper.accept(log.receipt(3), keep=True)
    assert keeper.latest_size == 8
    log.append_batch([make_entry(i) for i in range(8, 20)])
    since = keeper.latest_size
    keeper.accept(log.receipt(15, since=since), keep=True)
    assert keeper.latest_size == 20
    assert sorted(p.name for p in tmp_path.glob("receipt-*")) == [
        "receipt-000000000003-8.json", "receipt-000000000015-20.json"]
    # Without a consistency proof (and nothing to fetch from), a new size is not accepted.
    log.append_batch([make_entry(20)])
    with pytest.raises(AuditError) as err:
        keeper.accept(log.receipt(20))
    assert err.value.code == "audit.consistency_invalid"
    # A restarted keeper remembers the latest checkpoint it accepted.
    again = ReceiptKeeper(log_signer.verifier, directory=tmp_path,
                          fetch_consistency=log.prove_consistency)
    assert again.latest_size == 20
    again.accept(log.receipt(20))
    assert again.latest_size == 21


def test_keeper_catches_a_split_view(log_signer: NoteSigner) -> None:
    """The operator (holding a copy of the key, or a compromised enclave) shows two clients
    two histories. Each receipt verifies alone; the keeper refuses the second history."""
    honest = _log(log_signer, 8)
    forked = AuditLog(MemoryLogStore(), origin=ORIGIN, signer=log_signer)
    forked.append_batch([make_entry(i) for i in range(4)])
    forked.append_batch([make_entry(i, prompt="rewritten") for i in range(4, 8)])
    keeper = ReceiptKeeper(log_signer.verifier, fetch_consistency=honest.prove_consistency)
    keeper.accept(honest.receipt(1))
    verify_receipt(forked.receipt(1), log_signer.verifier)  # fine on its own
    with pytest.raises(AuditError) as err:
        keeper.accept(forked.receipt(1))  # same size, other root
    assert err.value.code == "audit.consistency_invalid"

    forked.append_batch([make_entry(8)])
    with pytest.raises(AuditError) as err:  # larger, but not an extension of what was seen
        keeper.accept(forked.receipt(8, since=8))
    assert err.value.code == "audit.consistency_invalid"


def test_keeper_checks_older_checkpoints_against_newer(log_signer: NoteSigner) -> None:
    log = _log(log_signer, 4)
    old = log.receipt(2)
    log.append_batch([make_entry(i) for i in range(4, 9)])
    keeper = ReceiptKeeper(log_signer.verifier, fetch_consistency=log.prove_consistency)
    keeper.accept(log.receipt(7))
    keeper.accept(old)  # out of order: proved consistent with the newer one
    assert keeper.latest_size == 9


def test_receipt_json_shape(log_signer: NoteSigner) -> None:
    doc = json.loads(_log(log_signer, 3).receipt(0, since=1).to_json())
    assert set(doc) == {"v", "entry", "index", "proof", "checkpoint", "consistency"}
    assert doc["consistency"]["size1"] == 1
    with pytest.raises(AuditError):
        Receipt.from_json(json.dumps({**doc, "extra": 1}).encode())
