"""Re-issue a real TDX quote under a test PKI, to reach paths no public vector reaches.

The TD report, attestation key and quote signature stay the real ones (they verify as they
are); only the PCK chain is replaced by a test root -> "PCK Platform CA" -> leaf carrying the
real leaf's SGX extension, and the QE report is re-signed by the new leaf key. Collateral is
signed by a test "TCB Signing" certificate under the same root. Tests pass the test root's
fingerprint as ``trusted_roots``, so the production pin is never touched.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from medclave.attestation.dcap.pck import SGX_EXTENSION_OID
from medclave.attestation.tdx import abi
from medclave.attestation.x509chain import fingerprint

_FROM = datetime(2020, 1, 1, tzinfo=UTC)
_TO = datetime(2040, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Medclave Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
          extension: bytes | None = None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_FROM)
        .not_valid_after(_TO)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SGX_EXTENSION_OID, extension), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def raw_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass
class ForgePki:
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    leaf_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    signing_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.root = _cert("Test SGX Root CA", self.root_key, "Test SGX Root CA", self.root_key,
                          ca=True)
        self.ca = _cert("Test SGX PCK Platform CA", self.ca_key, "Test SGX Root CA",
                        self.root_key, ca=True)
        self.signer = _cert("Test SGX TCB Signing", self.signing_key, "Test SGX Root CA",
                            self.root_key, ca=False)

    @property
    def roots(self) -> frozenset[str]:
        return frozenset({fingerprint(self.root)})

    def reissue(
        self, quote: bytes, *, qe_report: bytes | None = None
    ) -> tuple[bytes, x509.Certificate]:
        """``quote`` with its PCK chain replaced by this PKI's; returns (quote, new leaf)."""
        q = abi.parse_quote(quote)
        real_leaf = x509.load_pem_x509_certificates(q.pck_chain_pem.rstrip(b"\x00"))[0]
        ext = real_leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        leaf = _cert("Test SGX PCK Certificate", self.leaf_key, "Test SGX PCK Platform CA",
                     self.ca_key, ca=False, extension=ext.value)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM)
                       for c in (leaf, self.ca, self.root))
        report = q.qe_report.raw if qe_report is None else qe_report
        inner = (
            report + raw_signature(self.leaf_key, report)
            + struct.pack("<H", len(q.qe_auth_data)) + q.qe_auth_data
            + struct.pack("<HI", abi.CERT_TYPE_PCK_CHAIN, len(pem)) + pem
        )
        sig_data = (q.signature + q.attestation_key
                    + struct.pack("<HI", abi.CERT_TYPE_QE_REPORT, len(inner)) + inner)
        return q.signed + struct.pack("<I", len(sig_data)) + sig_data, leaf

    def crl(self, revoked: list[int], *, this_update: datetime = _FROM,
            next_update: datetime = _TO) -> bytes:
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.ca.subject)
                   .last_update(this_update)
                   .next_update(next_update))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(this_update).build())
        return builder.sign(self.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def signed_response(self, member: str, content: dict[str, Any]) -> bytes:
        """A PCS-style response: the signature is over the exact member bytes."""
        body = json.dumps(content, separators=(",", ":")).encode()
        sig = raw_signature(self.signing_key, body).hex()
        return b'{"' + member.encode() + b'":' + body + b',"signature":"' + sig.encode() + b'"}'

    def signer_pem(self) -> bytes:
        return self.signer.public_bytes(serialization.Encoding.PEM)

    def reissue_sgx(self, quote: bytes, *, body: bytes | None = None, version: int = 3) -> bytes:
        """An SGX v3 ``quote`` with its PCK chain replaced by this PKI's. With ``body`` (a new
        enclave report) or ``version`` 4 (the v4 layout: QE data inside certification data of
        type 6), the attestation key is replaced too and the quote re-signed by it."""
        from medclave.attestation.sgx import abi as sgx_abi

        q = sgx_abi.parse_quote(quote)
        real_leaf = x509.load_pem_x509_certificates(q.pck_chain_pem.rstrip(b"\x00"))[0]
        ext = real_leaf.extensions.get_extension_for_oid(SGX_EXTENSION_OID).value
        assert isinstance(ext, x509.UnrecognizedExtension)
        leaf = _cert("Test SGX PCK Certificate", self.leaf_key, "Test SGX PCK Platform CA",
                     self.ca_key, ca=False, extension=ext.value)
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM)
                       for c in (leaf, self.ca, self.root))
        signed, signature, att_key, report = q.signed, q.signature, q.attestation_key, q.qe_report.raw
        if body is None and version == 4:
            body = q.body.raw
        if body is not None:
            ak = ec.generate_private_key(ec.SECP256R1())
            att_key = ak.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
            report = (report[:320] + hashlib.sha256(att_key + q.qe_auth_data).digest()
                      + bytes(32))
            signed = struct.pack("<H", version) + q.signed[2:48] + body
            signature = raw_signature(ak, signed)
        qe_part = (report + raw_signature(self.leaf_key, report)
                   + struct.pack("<H", len(q.qe_auth_data)) + q.qe_auth_data
                   + struct.pack("<HI", abi.CERT_TYPE_PCK_CHAIN, len(pem)) + pem)
        if version == 4:
            qe_part = struct.pack("<HI", abi.CERT_TYPE_QE_REPORT, len(qe_part)) + qe_part
        sig_data = signature + att_key + qe_part
        return signed + struct.pack("<I", len(sig_data)) + sig_data
