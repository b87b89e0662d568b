"""AMD endorsement certificates: KDS extensions of the VCEK/VLEK, roles, the GHCB cert table.

The VCEK/VLEK carry their TCB and chip identity as private X.509 extensions under
1.3.6.1.4.1.3704.1 (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification", publication 57230, "VCEK Certificate Extensions"). Extension values are parsed
here with a small, bounded DER reader: the values are tiny and the shapes fixed.
"""

from __future__ import annotations

import struct
import uuid
import warnings
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from medclave.attestation.sevsnp.abi import PRODUCTS, Product, TcbParts
from medclave.attestation.x509chain import load_certificates
from medclave.errors import AttestationError

_KDS = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{_KDS}.1"
OID_PRODUCT_NAME = f"{_KDS}.2"
OID_BL_SPL = f"{_KDS}.3.1"
OID_TEE_SPL = f"{_KDS}.3.2"
OID_SNP_SPL = f"{_KDS}.3.3"
OID_SPL4 = f"{_KDS}.3.4"
OID_SPL5 = f"{_KDS}.3.5"
OID_SPL6 = f"{_KDS}.3.6"
OID_SPL7 = f"{_KDS}.3.7"
OID_UCODE_SPL = f"{_KDS}.3.8"
OID_FMC_SPL = f"{_KDS}.3.9"  # Turin
OID_HWID = f"{_KDS}.4"
OID_CSP_ID = f"{_KDS}.5"  # VLEK: the cloud provider it was issued to

HWID_SIZE = 64
TURIN_HWID_SIZE = 8  # Turin VCEKs name the chip by 8 octets (KDS spec, Turin hwID)

Role = Literal["vcek", "vlek", "ask", "asvk", "ark", "other"]

# GUIDs of the extended-report certificate table (GHCB spec 56421, SNP_GUEST_REQUEST
# "Certificate table"); the GUID bytes are in RFC 4122 order, as the hypervisors write them.
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CERT_TABLE_ENTRY = 24
MAX_CERT_TABLE_ENTRIES = 16
MAX_CERT_TABLE_BYTES = 64 * 1024


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def role_of(cert: x509.Certificate) -> Role:
    """VCEK/VLEK/ASK/ASVK/ARK by subject CN, the names KDS issues (KDS spec, "Certificates")."""
    cn = common_name(cert)
    if cn == "SEV-VCEK":
        return "vcek"
    if cn == "SEV-VLEK":
        return "vlek"
    if cn.startswith("SEV-VLEK-"):
        return "asvk"
    if cn.startswith("SEV-"):
        return "ask"
    if cn.startswith("ARK-"):
        return "ark"
    return "other"


def product_of_name(name: str) -> Product | None:
    """"Milan-B0" -> Milan, "ARK-Genoa" -> Genoa, "SEV-VLEK-Turin" -> Turin."""
    for part in name.split("-"):
        if part in PRODUCTS:
            return part
    return None


# --- bounded DER for extension values ---------------------------------------------------------


def _tlv(data: bytes, what: str) -> tuple[int, bytes]:
    """One DER TLV that must span all of ``data``; definite, minimal lengths only."""
    if len(data) < 2:
        raise AttestationError("attestation.malformed", f"{what}: truncated DER")
    tag, first = data[0], data[1]
    if first < 0x80:
        length, start = first, 2
    elif first in (0x81, 0x82) and len(data) >= 2 + (first & 0x7F):
        n = first & 0x7F
        length, start = int.from_bytes(data[2:2 + n], "big"), 2 + n
        if length < 0x80 or (n == 2 and length < 0x100):
            raise AttestationError("attestation.malformed", f"{what}: non-minimal DER length")
    else:
        raise AttestationError("attestation.malformed", f"{what}: unsupported DER length")
    if start + length != len(data):
        raise AttestationError("attestation.malformed", f"{what}: DER length mismatch")
    return tag, data[start:]


def _der_u8(value: bytes, what: str) -> int:
    tag, body = _tlv(value, what)
    if tag != 0x02 or not body or len(body) > 2:
        raise AttestationError("attestation.malformed", f"{what}: not a small INTEGER")
    if body[0] & 0x80 or (len(body) == 2 and (body[0] != 0 or not body[1] & 0x80)):
        raise AttestationError("attestation.malformed", f"{what}: negative or non-minimal INTEGER")
    n = int.from_bytes(body, "big")
    if n > 255:
        raise AttestationError("attestation.malformed", f"{what}: {n} is not a byte")
    return n


def _der_ia5(value: bytes, what: str) -> str:
    tag, body = _tlv(value, what)
    if tag != 0x16 or len(body) > 256:
        raise AttestationError("attestation.malformed", f"{what}: not an IA5String")
    try:
        return body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise AttestationError("attestation.malformed", f"{what}: not ASCII") from exc


def _hwid(value: bytes, size: int) -> bytes:
    """KDS issues the hwID as raw octets without a tag; an OCTET STRING wrap is accepted too."""
    if len(value) == size:
        return value
    tag, body = _tlv(value, "hwID")
    if tag != 0x04 or len(body) != size:
        raise AttestationError("attestation.malformed", f"hwID is not {size} octets")
    return body


# --- the VCEK/VLEK extensions -------------------------------------------------------------------


@dataclass(frozen=True)
class KdsExtensions:
    struct_version: int
    product_name: str
    product: Product | None
    tcb: TcbParts
    hwid: bytes | None  # VCEK only; 8 bytes on Turin, 64 before
    csp_id: str | None  # VLEK only

    @property
    def tcb_raw(self) -> int:
        return self.tcb.encode()


def kds_extensions(cert: x509.Certificate) -> KdsExtensions:
    """The KDS extensions of a VCEK or VLEK certificate (missing SPLs refused)."""
    values: dict[str, bytes] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exts = list(cert.extensions)
    except ValueError as exc:  # duplicate or undecodable extensions
        raise AttestationError("attestation.malformed", f"certificate extensions: {exc}") from exc
    for ext in exts:
        oid = ext.oid.dotted_string
        if oid.startswith(_KDS + ".") and isinstance(ext.value, x509.UnrecognizedExtension):
            values[oid] = ext.value.value

    def need(oid: str, name: str) -> bytes:
        if oid not in values:
            raise AttestationError(
                "attestation.malformed", f"{common_name(cert)} lacks the {name} extension ({oid})"
            )
        return values[oid]

    def u8(oid: str, name: str, default: int | None = None) -> int:
        if default is not None and oid not in values:
            return default
        return _der_u8(need(oid, name), name)

    version = u8(OID_STRUCT_VERSION, "structVersion")
    name = _der_ia5(need(OID_PRODUCT_NAME, "productName"), "productName")
    product = product_of_name(name)
    turin = product == "Turin"
    if turin:
        tcb = TcbParts(
            fmc=u8(OID_FMC_SPL, "fmcSPL"), bl=u8(OID_BL_SPL, "blSPL"),
            tee=u8(OID_TEE_SPL, "teeSPL"), snp=u8(OID_SNP_SPL, "snpSPL"),
            reserved=(u8(OID_SPL5, "spl5", 0), u8(OID_SPL6, "spl6", 0), u8(OID_SPL7, "spl7", 0)),
            ucode=u8(OID_UCODE_SPL, "ucodeSPL"),
        )
    else:
        tcb = TcbParts(
            bl=u8(OID_BL_SPL, "blSPL"), tee=u8(OID_TEE_SPL, "teeSPL"),
            reserved=(u8(OID_SPL4, "spl4", 0), u8(OID_SPL5, "spl5", 0),
                      u8(OID_SPL6, "spl6", 0), u8(OID_SPL7, "spl7", 0)),
            snp=u8(OID_SNP_SPL, "snpSPL"), ucode=u8(OID_UCODE_SPL, "ucodeSPL"),
        )
    hwid = (_hwid(values[OID_HWID], TURIN_HWID_SIZE if turin else HWID_SIZE)
            if OID_HWID in values else None)
    csp = _der_ia5(values[OID_CSP_ID], "csp_id") if OID_CSP_ID in values else None
    if hwid is not None and csp is not None:
        raise AttestationError("attestation.malformed", "certificate has both hwID and csp_id")
    return KdsExtensions(struct_version=version, product_name=name, product=product, tcb=tcb,
                         hwid=hwid, csp_id=csp)


# --- extended-report certificate table ----------------------------------------------------------


@dataclass(frozen=True)
class CertTableEntry:
    guid: uuid.UUID
    data: bytes


def parse_cert_table(data: bytes) -> tuple[CertTableEntry, ...]:
    """The GUID/offset/length table an extended guest request returns (GHCB spec 56421).

    Entries are 24 bytes (GUID, u32 offset, u32 length) ended by an all-zero entry; offsets
    count from the table start and must point past the header and inside ``data``.
    """
    if len(data) > MAX_CERT_TABLE_BYTES:
        raise AttestationError("attestation.malformed", "certificate table too large")
    headers: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY > len(data):
            raise AttestationError("attestation.malformed", "certificate table not terminated")
        guid_bytes = data[pos:pos + 16]
        offset, length = struct.unpack_from("<II", data, pos + 16)
        pos += CERT_TABLE_ENTRY
        if offset == 0 and length == 0 and not any(guid_bytes):
            break
        if len(headers) >= MAX_CERT_TABLE_ENTRIES:
            raise AttestationError("attestation.malformed", "too many certificate table entries")
        headers.append((uuid.UUID(bytes=guid_bytes), offset, length))
    entries = []
    for guid, offset, length in headers:
        if offset < pos or length == 0 or offset + length > len(data):
            raise AttestationError(
                "attestation.malformed",
                f"certificate table entry {guid} points outside the table ({offset}+{length})",
            )
        entries.append(CertTableEntry(guid, data[offset:offset + length]))
    return tuple(entries)


def certificates_from_table(data: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of a table; each role is later decided by subject CN, not by GUID."""
    out: list[x509.Certificate] = []
    for entry in parse_cert_table(data):
        out.extend(load_certificates(entry.data))
    return tuple(out)


def encode_cert_table(entries: tuple[tuple[uuid.UUID, bytes], ...]) -> bytes:
    """The table for ``entries`` (used by the sim platform and tests)."""
    header = CERT_TABLE_ENTRY * (len(entries) + 1)
    out = bytearray()
    blobs = bytearray()
    for guid, blob in entries:
        out += guid.bytes + struct.pack("<II", header + len(blobs), len(blob))
        blobs += blob
    out += bytes(CERT_TABLE_ENTRY)
    return bytes(out + blobs)
