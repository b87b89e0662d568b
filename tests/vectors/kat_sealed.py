"""Vectors for the sealed model: manifest, key id, chunk key, nonces, AAD, chunks."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.vectors._kat import GENERATOR, Vector, agree, sha256, vector

MODEL_KEY = bytes.fromhex("6d55c8e82e198caf3cdc91129b49eb6f7efc5ae09df77655f3cb3688fdf0de77")

# ---------------------------------------------------------------------------------------------
# sealed model (crypto/sealed.py; docs/architecture.md "Sealed model")

SEALED_LABEL = b"medclave-sealed-model-v1"
SEALED_CHUNK = 4096  # sealed.MIN_CHUNK_SIZE: the smallest the format allows
_SEALED_CASES = [
    ("three_chunks_short_last", 2 * SEALED_CHUNK + 123,
     "6f3125ba105059d03be2d806f2fd9badcb51148678634a90d4a2dd9a1e09f5bc"),
    ("one_full_chunk", SEALED_CHUNK,
     "5f2c711687927e7fec64c81e95043ee28260b97d79d6a4114dbabac0042c0018"),
    ("empty_model", 0, "cfeb0ebe9841a3b279e9fc52bebdf0c949b1b7b628fdbd64a085fafcdec34450"),
]
SEALED_OWNER = "Vendor Ärzte-KI GmbH"


def _plaintext(size: int) -> bytes:
    stream = b"".join(sha256(b"medclave sealed-model kat" + i.to_bytes(4, "big"))
                      for i in range(size // 32 + 1))
    return stream[:size]


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def _sealed_case(name: str, size: int, salt: bytes) -> Vector:
    from medclave.crypto import sealed

    plaintext = _plaintext(size)
    key_id = _hkdf(MODEL_KEY, None, SEALED_LABEL + b"/key-id", 16).hex()
    chunk_key = _hkdf(MODEL_KEY, salt, SEALED_LABEL + b"/chunk-key", 32)
    count = max(1, -(-size // SEALED_CHUNK))
    manifest: dict[str, Any] = {"format": "medclave-sealed-model-v1", "cipher": "AES-256-GCM",
                "owner": SEALED_OWNER, "model_format": "gguf", "key_id": key_id,
                "salt": salt.hex(), "size": size, "chunk_size": SEALED_CHUNK,
                "chunk_count": count, "plaintext_sha256": sha256(plaintext).hex()}
    canonical = (
        f'{{"chunk_count":{count},"chunk_size":{SEALED_CHUNK},"cipher":"AES-256-GCM",'
        f'"format":"medclave-sealed-model-v1","key_id":"{key_id}","model_format":"gguf",'
        f'"owner":"{SEALED_OWNER}","plaintext_sha256":"{manifest["plaintext_sha256"]}",'
        f'"salt":"{salt.hex()}","size":{size}}}').encode()
    agree(f"{name}: manifest RFC 8785", canonical, bytes(rfc8785.dumps(manifest)))
    digest = sha256(canonical)
    chunks: list[dict[str, Any]] = []
    for i in range(count):
        nonce = b"\x00" * 4 + i.to_bytes(8, "big")
        aad = SEALED_LABEL + b"\x00" + digest + i.to_bytes(8, "big") + bytes([i == count - 1])
        part = plaintext[i * SEALED_CHUNK:(i + 1) * SEALED_CHUNK]
        chunks.append({"index": i, "nonce_hex": nonce.hex(), "aad_hex": aad.hex(),
                       "plaintext_offset": i * SEALED_CHUNK, "plaintext_length": len(part),
                       "ciphertext_hex": AESGCM(chunk_key).encrypt(nonce, part, aad).hex()})
    payload = b"".join(bytes.fromhex(c["ciphertext_hex"]) for c in chunks)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.gguf"
        src.write_bytes(plaintext)
        got, _ = sealed.seal_file(src, Path(tmp) / "out", owner=SEALED_OWNER, key=MODEL_KEY,
                                  model_format="gguf", chunk_size=SEALED_CHUNK, salt=salt)
        agree(f"{name}: manifest.json", canonical + b"\n",
              (Path(tmp) / "out" / sealed.MANIFEST_NAME).read_bytes())
        agree(f"{name}: model.sealed", payload,
              (Path(tmp) / "out" / sealed.PAYLOAD_NAME).read_bytes())
        agree(f"{name}: manifest digest", digest, got.digest)
    return {
        "name": name,
        "inputs": {"model_key_hex": MODEL_KEY.hex(), "salt_hex": salt.hex(),
                   "owner": SEALED_OWNER, "model_format": "gguf", "chunk_size": SEALED_CHUNK,
                   "plaintext_hex": plaintext.hex()},
        "key_id": key_id,
        "chunk_key_hex": chunk_key.hex(),
        "manifest": manifest,
        "manifest_canonical_json": canonical.decode("utf-8"),
        "manifest_file_hex": (canonical + b"\n").hex(),
        "manifest_sha256_hex": digest.hex(),
        "chunks": chunks,
        "payload_sha256_hex": sha256(payload).hex(),
    }


@vector("sealed_model.json")
def sealed_model_vectors() -> Vector:
    return {
        "description": "Sealed model v1 (src/medclave/crypto/sealed.py module docstring; "
                       "docs/architecture.md 'Sealed model'): manifest.json = RFC 8785 canonical "
                       "JSON of the manifest and a newline; key_id = HKDF-SHA256(K, no salt, "
                       "info \"medclave-sealed-model-v1/key-id\")[:16]; chunk_key = "
                       "HKDF-SHA256(K, salt, info \"medclave-sealed-model-v1/chunk-key\"); chunk "
                       "i = AES-256-GCM(chunk_key, nonce 0x00000000 || u64be(i), aad "
                       "\"medclave-sealed-model-v1\" 0x00 || SHA-256(manifest canonical JSON) || "
                       "u64be(i) || final flag byte) as ciphertext || tag; model.sealed = the "
                       "chunks in order. The salt is drawn at random per sealing; it is an input "
                       "here.",
        "generator": GENERATOR,
        "cases": [_sealed_case(name, size, bytes.fromhex(salt))
                  for name, size, salt in _SEALED_CASES],
    }


