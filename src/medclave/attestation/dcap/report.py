"""The SGX enclave REPORT body (384 bytes), no cryptography.

Intel SGX Developer Reference, "REPORT" (``sgx_report_body_t``): the body every DCAP quote
carries for its Quoting Enclave, and an SGX quote for the attested enclave itself (Intel SGX
ECDSA Quote Library API, A.4 "Enclave Report Body"). Offsets: CPUSVN 0..16, MISCSELECT 16..20,
ISVEXTPRODID 32..48, ATTRIBUTES 48..64, MRENCLAVE 64..96, MRSIGNER 128..160, CONFIGID 192..256,
ISVPRODID 256..258, ISVSVN 258..260, CONFIGSVN 260..262, ISVFAMILYID 304..320, REPORTDATA
320..384.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from medclave.errors import AttestationError

REPORT_BODY_SIZE = 384
# ATTRIBUTES.FLAGS bit 1: the enclave was launched in debug mode (its memory is readable).
ATTRIBUTE_DEBUG = 0x02


@dataclass(frozen=True)
class EnclaveReport:
    """An SGX REPORT body: the QE's in every DCAP quote, the application enclave's in SGX's."""

    raw: bytes
    cpu_svn: bytes
    miscselect: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes
    isv_ext_prod_id: bytes = b""
    config_id: bytes = b""
    config_svn: int = 0
    isv_family_id: bytes = b""

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & ATTRIBUTE_DEBUG)


def parse_report_body(raw: bytes, what: str = "QE report") -> EnclaveReport:
    if len(raw) != REPORT_BODY_SIZE:
        raise AttestationError("attestation.malformed",
                               f"{what} is {len(raw)} bytes, expected {REPORT_BODY_SIZE}")
    return EnclaveReport(
        raw=raw,
        cpu_svn=raw[0:16],
        miscselect=int(struct.unpack_from("<I", raw, 16)[0]),
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        isv_prod_id=int(struct.unpack_from("<H", raw, 256)[0]),
        isv_svn=int(struct.unpack_from("<H", raw, 258)[0]),
        report_data=raw[320:384],
        isv_ext_prod_id=raw[32:48],
        config_id=raw[192:256],
        config_svn=int(struct.unpack_from("<H", raw, 260)[0]),
        isv_family_id=raw[304:320],
    )
