"""Intel SGX DCAP ECDSA quotes v3 (and the v4 layout), bytes to structures, no cryptography.

Intel "SGX ECDSA Quote Library API", Appendix A ("ECDSA Quote Format"): a quote is header (48)
|| ISV enclave report body (384) || u32 signature-data length || signature data. The header
(A.3) is version u16, attestation key type u16 (2: ECDSA-256 with P-256), a u32 that v3 reserves
and v4 names the TEE type (0 for SGX, 0x81 for TDX), QE SVN u16, PCE SVN u16, QE vendor id (16)
and user data (20). v3 signature data (A.4) is ECDSA signature (64) || attestation key (64) ||
QE report (384) || QE report signature (64) || u16 auth-data length || auth data || certification
data (u16 type, u32 size, data), whose type must be 5 (the PEM PCK chain). v4 (as TDX) puts the
QE report and the rest inside certification data of type 6 after the attestation key.

Every length field is bounded by what remains; bytes after the declared signature data are
ignored (nothing there is signed or used), as for TDX.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from medclave.attestation.dcap.reader import QuoteReader
from medclave.attestation.dcap.report import REPORT_BODY_SIZE, EnclaveReport, parse_report_body
from medclave.attestation.tdx.abi import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_TYPE_QE_REPORT,
    HEADER_SIZE,
)
from medclave.errors import AttestationError

MAX_QUOTE_BYTES = 128 * 1024
QUOTE_VERSIONS = (3, 4)
TEE_TYPE_SGX = 0


def _malformed(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"SGX quote: {detail}")


@dataclass(frozen=True)
class Header:
    version: int
    att_key_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class Quote:
    header: Header
    body: EnclaveReport
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: int


def _reader(data: bytes, start: int, end: int) -> QuoteReader:
    return QuoteReader(data, start, end, label="SGX quote")


def looks_like_quote(data: bytes) -> bool:
    """Content sniffing for the registry: the fixed header fields of a v3/v4 SGX quote."""
    if len(data) < HEADER_SIZE + REPORT_BODY_SIZE or len(data) > MAX_QUOTE_BYTES:
        return False
    version, att_key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    return (version in QUOTE_VERSIONS and att_key_type == ATT_KEY_TYPE_ECDSA_P256
            and tee_type == TEE_TYPE_SGX)


def parse_quote(data: bytes) -> Quote:
    """Parse a v3 or v4 SGX quote; raise ``attestation.malformed`` on any inconsistency."""
    if len(data) > MAX_QUOTE_BYTES:
        raise _malformed(f"{len(data)} bytes, over {MAX_QUOTE_BYTES}")
    if len(data) < HEADER_SIZE:
        raise _malformed("shorter than its header")
    version, att_key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
    if version not in QUOTE_VERSIONS:
        raise AttestationError("attestation.unsupported_version",
                               f"SGX quote version {version}, expected 3 or 4")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise AttestationError("attestation.unsupported_version",
                               f"attestation key type {att_key_type}, only 2 (ECDSA P-256)")
    if tee_type != TEE_TYPE_SGX:
        raise _malformed(f"TEE type {tee_type:#x} is not SGX (0)")
    header = Header(version, att_key_type, qe_svn, pce_svn, data[12:28], data[28:48])
    r = _reader(data, HEADER_SIZE, len(data))
    body = parse_report_body(r.take(REPORT_BODY_SIZE, "ISV enclave report"), "enclave report")
    signed = data[: r.pos]
    s, signature, attestation_key = r.signature_data()
    if version == 4:
        cert_type, size = s.cert_data("certification data")
        if cert_type != CERT_TYPE_QE_REPORT or s.pos + size != s.end:
            raise _malformed("v4 certification data is not one type-6 element")
    qe_report, qe_sig, auth, pem = s.qe_part(what="certification data",
                                             container="the signature data")
    return Quote(header, body, signed, signature, attestation_key, qe_report, qe_sig, auth, pem,
                 len(data) - s.end)
