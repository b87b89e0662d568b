"""The bounded cursor both DCAP quote parsers read with (TDX and SGX share the quote layout of
Intel's "Intel SGX ECDSA Quote Library Reference", A.3/A.4): every read checks what is left, so
no length field can run past the buffer, and certification data is bounded."""

from __future__ import annotations

import struct

from medclave.errors import AttestationError

MAX_CERT_DATA_SIZE = 64 * 1024


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
