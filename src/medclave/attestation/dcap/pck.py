"""The SGX extension of an Intel PCK certificate (bytes to structure, hand-parsed DER).

Intel SGX PCK Certificate and CRL Profile, §1.3.5 "Intel SGX Extensions": the extension
1.2.840.113741.1.13.1 is a SEQUENCE of SEQUENCE { OID, value } naming the PPID, the TCB
(16 component SVNs, PCESVN, CPUSVN), the PCE-ID, the FMSPC, the SGX type and, for Platform-CA
issued certificates, the platform instance and configuration. Only definite-length,
single-byte-tag DER is accepted, and every length is checked against its enclosing element.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from medclave.errors import AttestationError

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_MAX_EXTENSION_BYTES = 4096
_MAX_DEPTH = 4

_PREFIX = "1.2.840.113741.1.13.1"
_OID_PPID = f"{_PREFIX}.1"
_OID_TCB = f"{_PREFIX}.2"
_OID_PCESVN = f"{_PREFIX}.2.17"
_OID_CPUSVN = f"{_PREFIX}.2.18"
_OID_PCEID = f"{_PREFIX}.3"
_OID_FMSPC = f"{_PREFIX}.4"
_OID_SGX_TYPE = f"{_PREFIX}.5"

_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30


@dataclass(frozen=True)
class PckTcb:
    """What the PCK certificate says about the platform it was issued to."""

    sgx_tcb_components: tuple[int, ...]  # 16 SVNs, index 0 first
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    ppid: bytes
    sgx_type: int


def _bad(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", f"PCK SGX extension: {detail}")


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the element at ``pos``, within ``end``."""
    if pos + 2 > end:
        raise _bad("truncated element")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise _bad("multi-byte tags are not used by this profile")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or pos + count > end:
            raise _bad("unsupported or truncated length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        if length < 0x80:
            raise _bad("non-minimal length")
        pos += count
    if length > end - pos:
        raise _bad("element runs past its container")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        tag, cs, ce = _tlv(buf, pos, end)
        out.append((tag, cs, ce))
        pos = ce
    return out


def _oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise _bad("bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if value.bit_length() > 64:
            raise _bad("OBJECT IDENTIFIER arc too large")
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _uint(content: bytes) -> int:
    if not content or len(content) > 9 or content[0] & 0x80:
        raise _bad("INTEGER out of range")
    return int.from_bytes(content, "big")


def _pairs(buf: bytes, start: int, end: int, depth: int) -> dict[str, tuple[int, int, int]]:
    """SEQUENCE OF SEQUENCE { OID, value } as {oid: (value tag, start, end)}."""
    if depth > _MAX_DEPTH:
        raise _bad("nested too deeply")
    out: dict[str, tuple[int, int, int]] = {}
    for tag, cs, ce in _children(buf, start, end):
        if tag != _TAG_SEQUENCE:
            raise _bad("entry is not a SEQUENCE")
        parts = _children(buf, cs, ce)
        if len(parts) != 2 or parts[0][0] != _TAG_OID:
            raise _bad("entry is not { OID, value }")
        oid = _oid(buf[parts[0][1] : parts[0][2]])
        if oid in out:
            raise _bad(f"duplicate entry {oid}")
        out[oid] = parts[1]
    return out


def parse_sgx_extension(der: bytes) -> PckTcb:
    """Parse the DER value of extension 1.2.840.113741.1.13.1."""
    if len(der) > _MAX_EXTENSION_BYTES:
        raise _bad("extension too large")
    tag, cs, ce = _tlv(der, 0, len(der))
    if tag != _TAG_SEQUENCE or ce != len(der):
        raise _bad("not a single SEQUENCE")
    top = _pairs(der, cs, ce, 1)

    def octets(oid: str, size: int) -> bytes:
        entry = top.get(oid)
        if entry is None or entry[0] != _TAG_OCTET_STRING or entry[2] - entry[1] != size:
            raise _bad(f"{oid} missing or not a {size}-byte OCTET STRING")
        return der[entry[1] : entry[2]]

    tcb_entry = top.get(_OID_TCB)
    if tcb_entry is None or tcb_entry[0] != _TAG_SEQUENCE:
        raise _bad("TCB entry missing")
    tcb = _pairs(der, tcb_entry[1], tcb_entry[2], 2)
    components: list[int] = []
    for index in range(1, 17):
        entry = tcb.get(f"{_OID_TCB}.{index}")
        if entry is None or entry[0] != _TAG_INTEGER:
            raise _bad(f"TCB component {index} missing")
        components.append(_uint(der[entry[1] : entry[2]]))
    pce = tcb.get(_OID_PCESVN)
    cpu = tcb.get(_OID_CPUSVN)
    if pce is None or pce[0] != _TAG_INTEGER:
        raise _bad("PCESVN missing")
    if cpu is None or cpu[0] != _TAG_OCTET_STRING or cpu[2] - cpu[1] != 16:
        raise _bad("CPUSVN missing")
    sgx_type = top.get(_OID_SGX_TYPE)
    if sgx_type is None or sgx_type[0] != _TAG_ENUMERATED:
        raise _bad("SGX type missing")
    return PckTcb(
        sgx_tcb_components=tuple(components),
        pce_svn=_uint(der[pce[1] : pce[2]]),
        cpu_svn=der[cpu[1] : cpu[2]],
        pce_id=octets(_OID_PCEID, 2),
        fmspc=octets(_OID_FMSPC, 6),
        ppid=octets(_OID_PPID, 16),
        sgx_type=_uint(der[sgx_type[1] : sgx_type[2]]),
    )


def pck_tcb(cert: x509.Certificate) -> PckTcb:
    """The SGX extension of a PCK leaf certificate."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound as exc:
        raise _bad("the PCK certificate has no SGX extension") from exc
    except ValueError as exc:  # duplicate or undecodable extensions
        raise _bad(f"unreadable extensions: {exc}") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _bad("unexpected extension type")
    return parse_sgx_extension(value.value)
