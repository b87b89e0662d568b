"""Vectors for sealed conversations (enclave/sealing/format.py): the conversation key, the owner
pseudonym, the chain, turn and head AAD and records."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.vectors._kat import GENERATOR, Vector, agree, sha256, vector

ROOT = bytes.fromhex("3f0b9d6c2e51a87412c9e0d3b6f58a2714c0e9d8b7a6f5e4d3c2b1a0918f7e6d")
SHARE = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00")
NONCES = [bytes.fromhex(h) for h in ("00112233445566778899aabb", "0f1e2d3c4b5a69788796a5b4",
                                     "c0ffee00c0ffee00c0ffee01")]
TENANT, SUBJECT, CONVERSATION, VERSION = "st-marys", "patient-Zoë", "conv_" + "ab" * 16, 3
TURNS: list[dict[str, Any]] = [
    {"at": 1764576000, "content": "I can't sleep and I feel hopeless", "role": "user"},
    {"at": 1764576003, "content": "Thank you for telling me.", "role": "assistant",
     "triage": "urgent"},
]
LABEL = b"medclave-sealing/v1"


def _lp(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


@vector("sealing.json")
def sealing() -> Vector:
    from medclave.enclave.sealing import format as fmt

    ids = _lp(TENANT) + _lp(SUBJECT) + _lp(CONVERSATION)
    info = LABEL + b"/conversation-key" + ids + VERSION.to_bytes(4, "big")
    key = HKDF(hashes.SHA256(), 32, SHARE, info).derive(ROOT)
    agree("conversation key", key,
          fmt.conversation_key(ROOT, SHARE, TENANT, SUBJECT, CONVERSATION, VERSION))
    owner_key = HKDF(hashes.SHA256(), 32, None, LABEL + b"/owner").derive(ROOT)
    owner = hmac.new(owner_key, _lp(TENANT) + _lp(SUBJECT), hashlib.sha256).hexdigest()
    agree("owner pseudonym", owner, fmt.owner_pseudonym(ROOT, TENANT, SUBJECT))
    chain = sha256(LABEL + b"/chain\x00" + ids)
    agree("chain start", chain, fmt.chain_start(TENANT, SUBJECT, CONVERSATION))
    turns: list[dict[str, Any]] = []
    for index, (turn, nonce) in enumerate(zip(TURNS, NONCES, strict=False)):
        aad = LABEL + b"/turn\x00" + ids + index.to_bytes(4, "big") + chain
        agree(f"turn {index} AAD", aad, fmt.turn_aad(TENANT, SUBJECT, CONVERSATION, index,
                                                     chain))
        plaintext = bytes(rfc8785.dumps(turn))
        record = b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)
        agree(f"turn {index} record", record, fmt.seal(key, turn, aad, nonce=nonce))
        turns.append({"index": index, "turn": turn, "plaintext_hex": plaintext.hex(),
                      "nonce_hex": nonce.hex(), "chain_before_hex": chain.hex(),
                      "aad_hex": aad.hex(), "record_hex": record.hex()})
        chain = sha256(chain + record)
        agree(f"chain after {index}", chain, fmt.chain_next(bytes.fromhex(
            turns[-1]["chain_before_hex"]), record))
    head_value = {"chain": chain.hex(), "meta": {"consent": "level", "created": 1764576000},
                  "turns": len(TURNS)}
    head_aad = LABEL + b"/head\x00" + ids
    agree("head AAD", head_aad, fmt.head_aad(TENANT, SUBJECT, CONVERSATION))
    head = b"\x01" + NONCES[2] + AESGCM(key).encrypt(NONCES[2], bytes(rfc8785.dumps(
        head_value)), head_aad)
    agree("head record", head, fmt.seal(key, head_value, head_aad, nonce=NONCES[2]))
    return {
        "description": "Sealed conversations, version 1 (enclave/sealing/format.py): HKDF-SHA256 "
                       "conversation key (IKM root, salt client share), owner pseudonym, the "
                       "hash chain, turn and head AAD, AES-256-GCM records 0x01||nonce||ct.",
        "generator": GENERATOR,
        "cases": [{
            "name": "two_turns", "root_hex": ROOT.hex(), "share_hex": SHARE.hex(),
            "tenant": TENANT, "subject": SUBJECT, "conversation": CONVERSATION,
            "root_version": VERSION, "info_hex": info.hex(), "key_hex": key.hex(),
            "owner": owner, "turns": turns, "head": head_value, "head_aad_hex": head_aad.hex(),
            "head_nonce_hex": NONCES[2].hex(), "head_record_hex": head.hex(),
        }],
    }
