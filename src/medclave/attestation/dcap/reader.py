"""The bounded cursor both DCAP quote parsers read with (TDX and SGX share the quote layout of
Intel's "Intel SGX ECDSA Quote Library Reference", A.3/A.4): every read checks what is left, so
no length field can run past the buffer, and certification data is bounded."""

from __future__ import annotations

import struct

from medclave.attestation.dcap.report import REPORT_BODY_SIZE, EnclaveReport, parse_report_body
from medclave.errors import AttestationError

MAX_CERT_DATA_SIZE = 64 * 1024
ECDSA_SIG_SIZE = 64
ATTESTATION_KEY_SIZE = 64
CERT_TYPE_PCK_CHAIN = 5


class QuoteReader:
    """A cursor over ``data[start:end]``; errors are ``attestation.malformed``, prefixed with
    ``label`` (e.g. "TDX quote") so the operator sees which parser refused."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None, *,
                 label: str) -> None:
        self._data = data
        self.pos = start
        self.end = len(data) if end is None else end
        self.label = label

    def malformed(self, detail: str) -> AttestationError:
        return AttestationError("attestation.malformed", f"{self.label}: {detail}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise self.malformed(f"{what} needs {n} bytes, {self.end - self.pos} left")
        out = self._data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def cert_data(self, what: str) -> tuple[int, int]:
        """A certification-data header (u16 type, u32 size), the size bounded by what remains."""
        cert_type, size = self.u16(f"{what} type"), self.u32(f"{what} size")
        if size > MAX_CERT_DATA_SIZE or size > self.end - self.pos:
            raise self.malformed(f"{what} size {size} exceeds the {self.end - self.pos} bytes "
                                 "that remain")
        return cert_type, size

    def signature_data(self) -> tuple[QuoteReader, bytes, bytes]:
        """At the end of the signed part: the u32 signature-data length, bounded by what
        remains, then the quote's ECDSA signature and the attestation key (A.3.8). Returns a
        reader over the rest of the signature data (its ``end`` is where that data ends)."""
        sig_len = self.u32("signature data length")
        if sig_len > self.end - self.pos:
            raise self.malformed(f"signature data length {sig_len} exceeds the "
                                 f"{self.end - self.pos} bytes left")
        s = QuoteReader(self._data, self.pos, self.pos + sig_len, label=self.label)
        return s, s.take(ECDSA_SIG_SIZE, "quote signature"), s.take(ATTESTATION_KEY_SIZE,
                                                                     "attestation key")

    def qe_part(self, *, what: str, container: str) -> tuple[EnclaveReport, bytes, bytes, bytes]:
        """The QE report certification data (A.3.11), to this reader's end: the QE report, its
        signature, the auth data and the PCK chain (certification data ``what`` of type 5,
        which must end where ``container`` does)."""
        qe_report = parse_report_body(self.take(REPORT_BODY_SIZE, "QE report"), "QE report")
        qe_sig = self.take(ECDSA_SIG_SIZE, "QE report signature")
        auth = self.take(self.u16("QE auth data length"), "QE auth data")
        cert_type, size = self.cert_data(what)
        if cert_type != CERT_TYPE_PCK_CHAIN:
            raise AttestationError(
                "attestation.certificate_missing",
                f"{what} type {cert_type}; only 5 (PCK chain, PEM) is supported",
            )
        if self.pos + size != self.end:
            raise self.malformed(f"{what} does not end where {container} ends")
        return qe_report, qe_sig, auth, self.take(size, "PCK certificate chain")
