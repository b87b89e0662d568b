"""Known answers for sealed conversations (tests/vectors/sealing.json), both directions, with
one-byte twins: expected values come from the committed file, never from the code under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medclave.enclave.sealing import format as fmt
from medclave.errors import SealingError

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parent / "sealing.json").read_text("utf-8"))["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_key_pseudonym_and_records_match(case: dict[str, Any]) -> None:
    root, share = bytes.fromhex(case["root_hex"]), bytes.fromhex(case["share_hex"])
    ids = (case["tenant"], case["subject"], case["conversation"])
    key = fmt.conversation_key(root, share, *ids, case["root_version"])
    assert key.hex() == case["key_hex"]
    assert fmt.owner_pseudonym(root, case["tenant"], case["subject"]) == case["owner"]
    chain = fmt.chain_start(*ids)
    for turn in case["turns"]:
        assert chain.hex() == turn["chain_before_hex"]
        aad = fmt.turn_aad(*ids, turn["index"], chain)
        assert aad.hex() == turn["aad_hex"]
        record = bytes.fromhex(turn["record_hex"])
        assert fmt.seal(key, turn["turn"], aad, nonce=bytes.fromhex(turn["nonce_hex"])) == record
        assert fmt.open_record(key, record, aad) == turn["turn"]
        chain = fmt.chain_next(chain, record)
    head = bytes.fromhex(case["head_record_hex"])
    assert fmt.open_record(key, head, fmt.head_aad(*ids)) == case["head"]
    assert case["head"]["chain"] == chain.hex()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_every_byte_flipped_is_refused(case: dict[str, Any]) -> None:
    key = bytes.fromhex(case["key_hex"])
    turn = case["turns"][0]
    record, aad = bytes.fromhex(turn["record_hex"]), bytes.fromhex(turn["aad_hex"])
    for i in range(len(record)):
        twin = bytearray(record)
        twin[i] ^= 1
        with pytest.raises(SealingError, match=r"sealing\.integrity_failed"):
            fmt.open_record(key, bytes(twin), aad)
    for i in range(len(aad)):
        twin = bytearray(aad)
        twin[i] ^= 0x80
        with pytest.raises(SealingError, match=r"sealing\.integrity_failed"):
            fmt.open_record(key, record, bytes(twin))
    # Another share derives another key, which opens nothing.
    other = bytearray.fromhex(case["share_hex"])
    other[0] ^= 1
    wrong = fmt.conversation_key(bytes.fromhex(case["root_hex"]), bytes(other), case["tenant"],
                                 case["subject"], case["conversation"], case["root_version"])
    with pytest.raises(SealingError, match=r"sealing\.integrity_failed"):
        fmt.open_record(wrong, record, aad)
