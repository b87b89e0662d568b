"""Test-only COSE_Sign1 signing and a small P-384 PKI, for evidence under a caller's own root.

Signatures are made here with ``cryptography`` directly (not by the code under test), so a
document this module builds verifies only if the verifier computes the RFC 9052 Sig_structure
the same way an independent signer does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

_HASH = {-7: (hashes.SHA256, 32), -35: (hashes.SHA384, 48)}


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, *, alg: int = -35,
          tag: bool = False, protected: dict[int, Any] | None = None) -> bytes:
    """An encoded COSE_Sign1 of ``payload`` (RFC 9052 §4.2, §4.4)."""
    prot = cbor2.dumps(protected if protected is not None else {1: alg})
    tbs = cbor2.dumps(["Signature1", prot, b"", payload])
    hash_cls, size = _HASH[alg]
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hash_cls())))
    body = [prot, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")]
    return cbor2.dumps(cbor2.CBORTag(18, body) if tag else body)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
                start: datetime | None = None, hours: int = 3) -> x509.Certificate:
    start = start or datetime(2025, 1, 1, tzinfo=UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + timedelta(hours=hours))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA384())


class NitroPki:
    """A root and a leaf in the Nitro shape, valid for 3 hours from 2025-01-01T00:00Z."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.root = certificate("test-root", self.root_key, "test-root", self.root_key, ca=True,
                                hours=24 * 365)
        self.leaf = certificate("test-enclave", self.leaf_key, "test-root", self.root_key, ca=False)

    def document(self, **fields: Any) -> bytes:
        payload: dict[str, Any] = {
            "module_id": "i-test-enc01", "digest": "SHA384", "timestamp": 1735693200000,
            "pcrs": {i: bytes([i + 1]) * 48 for i in range(16)},
            "certificate": self.leaf.public_bytes(Encoding.DER),
            "cabundle": [self.root.public_bytes(Encoding.DER)],
            "public_key": None, "user_data": None, "nonce": None,
        }
        payload.update(fields)
        return sign1(cbor2.dumps(payload), self.leaf_key)


def cca_token(cpak: ec.EllipticCurvePrivateKey, *, challenge: bytes = b"\x11" * 64,
              lifecycle: int = 0x3003, bind: bool = True,
              rak: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A CCA token in the legacy CCA-SSD layout, platform signed by ``cpak``, realm by a new RAK."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import PublicFormat

    rak = rak or ec.generate_private_key(ec.SECP384R1())
    rak_bytes = rak.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    realm = {10: challenge, 44235: bytes(64), 44236: "sha-512", 44237: rak_bytes,
             44238: b"\x22" * 64, 44239: [bytes(64)] * 4, 44240: "sha-256"}
    platform = {265: "http://arm.com/CCA-SSD/1.0.0",
                10: hashlib.sha256(rak_bytes).digest() if bind else bytes(32),
                2396: b"\x33" * 32, 256: b"\x01" + b"\x44" * 32, 2401: b"\xcf" * 4,
                2395: lifecycle, 2402: "sha-256",
                2399: [{1: "RMM", 2: b"\x55" * 32, 5: b"\x66" * 32, 6: "sha-256"}]}
    return cbor2.dumps(cbor2.CBORTag(399, {
        44234: sign1(cbor2.dumps(platform), cpak, tag=True),
        44241: sign1(cbor2.dumps(realm), rak, tag=True)}))
