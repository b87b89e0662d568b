"""Test-only go-tpm-tools attestations under a test AK CA: TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE
and the protobuf wire format, encoded here independently of the code under test."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class GcePki:
    def __init__(self, attributes: int = 0x00050072) -> None:
        self.root_key = rsa.generate_private_key(65537, 2048)
        self.ak = rsa.generate_private_key(65537, 2048)
        start = datetime(2024, 1, 1, tzinfo=UTC)
        self.root = (x509.CertificateBuilder().subject_name(_name("test AK root"))
                     .issuer_name(_name("test AK root")).public_key(self.root_key.public_key())
                     .serial_number(1).not_valid_before(start)
                     .not_valid_after(start + timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.root_key, hashes.SHA256()))
        self.ak_cert = (x509.CertificateBuilder().subject_name(_name("ak"))
                        .issuer_name(_name("test AK root")).public_key(self.ak.public_key())
                        .serial_number(2).not_valid_before(start)
                        .not_valid_after(start + timedelta(days=3650))
                        .sign(self.root_key, hashes.SHA256()))
        self.attributes = attributes

    def tpmt_public(self) -> bytes:
        n = self.ak.public_key().public_numbers().n.to_bytes(256, "big")
        return (struct.pack(">HHI", 0x0001, 0x000B, self.attributes) + struct.pack(">H", 0)
                + struct.pack(">HHH", 0x0010, 0x0014, 0x000B) + struct.pack(">HI", 2048, 0)
                + struct.pack(">H", len(n)) + n)

    def attestation(self, extra: bytes, pcrs: dict[int, bytes] | None = None) -> bytes:
        pcrs = pcrs if pcrs is not None else {i: bytes([i]) * 32 for i in range(24)}
        bitmap = bytearray(3)
        for i in pcrs:
            bitmap[i // 8] |= 1 << (i % 8)
        digest = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
        attest = (struct.pack(">IH", 0xFF544347, 0x8018) + struct.pack(">H", 0)
                  + struct.pack(">H", len(extra)) + extra + struct.pack(">QIIB", 1, 0, 0, 1)
                  + struct.pack(">Q", 0) + struct.pack(">IHB", 1, 0x000B, 3) + bytes(bitmap)
                  + struct.pack(">H", 32) + digest)
        sig = self.ak.sign(attest, padding.PKCS1v15(), hashes.SHA256())
        tpmt_sig = struct.pack(">HHH", 0x0014, 0x000B, len(sig)) + sig
        pcr_msg = field(1, 0x000B) + b"".join(field(2, field(1, i) + field(2, v))
                                              for i, v in sorted(pcrs.items()))
        quote = field(1, attest) + field(2, tpmt_sig) + field(3, pcr_msg)
        return (field(1, self.tpmt_public()) + field(2, quote) + field(3, b"log")
                + field(6, self.ak_cert.public_bytes(Encoding.DER)))
