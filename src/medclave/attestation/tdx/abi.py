"""Intel TDX quote bytes to structures, no cryptography (the go-tdx-guest ``abi`` split).

Layouts follow the Intel TDX DCAP Quoting Library API, Appendix A ("Quote Format"):
v4 (A.3) is header (48) || TD report 1.0 (584) || u32 signature-data length || signature data;
v5 (A.4) puts a body descriptor (u16 type, u32 size) between header and body and adds body type 3,
the TDX 1.5 report (648). The signature data (A.3.8) is ECDSA signature (64) || attestation key
(64) || certification data, which for TDX is type 6 (A.3.11: QE report 384 || QE report signature
64 || u16 auth-data length || auth data || nested certification data of type 5, the PEM PCK chain).

Every length field is bounded against what is left of the buffer. The signature data must be
internally exact; bytes after its declared end are accepted and ignored (real quotes carry padding,
and the go-tdx-guest sample carries deliberate garbage), since nothing there is signed or used.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from medclave.attestation.dcap.reader import CERT_TYPE_PCK_CHAIN as CERT_TYPE_PCK_CHAIN
from medclave.attestation.dcap.reader import QuoteReader
from medclave.attestation.dcap.report import EnclaveReport as QeReport
from medclave.errors import AttestationError

MAX_QUOTE_BYTES = 128 * 1024
HEADER_SIZE = 48
BODY_DESCRIPTOR_SIZE = 6  # v5: u16 body type, u32 body size (A.4.2)
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648

QUOTE_VERSIONS = (4, 5)
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_TYPE_QE_REPORT = 6

_BODY_SIZES = {BODY_TYPE_TD10: TD_REPORT10_SIZE, BODY_TYPE_TD15: TD_REPORT15_SIZE}


def _malformed(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"TDX quote: {detail}")


@dataclass(frozen=True)
class Header:
    """Quote header (A.3.1). ``qe_svn``/``pce_svn`` are reserved for TDX and carried as read."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReport:
    """TD quote body (A.3.2; TDX 1.5 fields of A.4.4 when ``body_type`` is 3)."""

    body_type: int
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None


@dataclass(frozen=True)
class Quote:
    """A parsed quote. ``signed`` is exactly what the attestation key signed (A.3.8)."""

    header: Header
    body: TdReport
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: int  # bytes after the declared signature data, ignored


def _reader(data: bytes, start: int = 0, end: int | None = None) -> QuoteReader:
    return QuoteReader(data, start, end, label="TDX quote")


def parse_header(data: bytes) -> Header:
    r = _reader(data)
    raw = r.take(HEADER_SIZE, "header")
    version, att_key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", raw, 0)
    header = Header(version, att_key_type, tee_type, qe_svn, pce_svn, raw[12:28], raw[28:48])
    if version not in QUOTE_VERSIONS:
        raise AttestationError(
            "attestation.unsupported_version", f"TDX quote version {version}, expected 4 or 5"
        )
    if tee_type != TEE_TYPE_TDX:
        raise _malformed(f"TEE type {tee_type:#x} is not TDX (0x81)")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise AttestationError(
            "attestation.unsupported_version",
            f"attestation key type {att_key_type}, only 2 (ECDSA-256 with P-256) is supported",
        )
    return header


def looks_like_quote(data: bytes) -> bool:
    """Content sniffing for the registry: the fixed header fields of a v4/v5 TDX quote."""
    if len(data) < HEADER_SIZE + TD_REPORT10_SIZE or len(data) > MAX_QUOTE_BYTES:
        return False
    version, att_key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    return (
        version in QUOTE_VERSIONS
        and att_key_type == ATT_KEY_TYPE_ECDSA_P256
        and tee_type == TEE_TYPE_TDX
    )


def _parse_td_report(raw: bytes, body_type: int) -> TdReport:
    def at(off: int, n: int) -> bytes:
        return raw[off : off + n]

    rtmrs = (at(328, 48), at(376, 48), at(424, 48), at(472, 48))
    extra15 = body_type == BODY_TYPE_TD15
    return TdReport(
        body_type=body_type,
        tee_tcb_svn=at(0, 16),
        mr_seam=at(16, 48),
        mr_signer_seam=at(64, 48),
        seam_attributes=at(112, 8),
        td_attributes=at(120, 8),
        xfam=at(128, 8),
        mr_td=at(136, 48),
        mr_config_id=at(184, 48),
        mr_owner=at(232, 48),
        mr_owner_config=at(280, 48),
        rtmrs=rtmrs,
        report_data=at(520, 64),
        tee_tcb_svn2=at(584, 16) if extra15 else None,
        mr_servicetd=at(600, 48) if extra15 else None,
    )


def parse_quote(data: bytes) -> Quote:
    """Parse a v4 or v5 TDX quote; raise ``attestation.malformed`` on any inconsistency."""
    if len(data) > MAX_QUOTE_BYTES:
        raise AttestationError(
            "attestation.malformed", f"TDX quote is {len(data)} bytes, over {MAX_QUOTE_BYTES}"
        )
    header = parse_header(data)
    r = _reader(data, HEADER_SIZE)
    if header.version == 4:
        body_type, body_size = BODY_TYPE_TD10, TD_REPORT10_SIZE
    else:
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        expected = _BODY_SIZES.get(body_type)
        if expected is None:
            raise AttestationError(
                "attestation.unsupported_version",
                f"quote body type {body_type}, expected 2 (TDX 1.0) or 3 (TDX 1.5)",
            )
        if body_size != expected:
            raise _malformed(f"body type {body_type} has size {body_size}, expected {expected}")
    body = _parse_td_report(r.take(body_size, "TD report"), body_type)
    # A.3.8 / A.4: the attestation key signs the header and the body, v5 descriptor included.
    signed = data[: r.pos]

    s, signature, attestation_key = r.signature_data()
    cert_type, size = s.cert_data("certification data")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise AttestationError(
            "attestation.unsupported_version",
            f"certification data type {cert_type}, expected 6 (QE report certification data)",
        )
    if s.pos + size != s.end:
        raise _malformed("certification data does not end where the signature data ends")
    qe_report, qe_report_signature, qe_auth_data, pck_chain_pem = s.qe_part(
        what="nested certification data", container="its container")
    return Quote(
        header=header,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain_pem,
        trailing=len(data) - s.end,
    )
