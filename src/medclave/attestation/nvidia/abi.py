"""SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS as an NVIDIA H100 GPU emits them (no cryptography).

The evidence is what nvtrust's ``nvmlDeviceGetConfComputeGpuAttestationReport`` returns, usually as
hex text: the 37-byte GET_MEASUREMENTS request the driver sent, followed by the GPU's signed
MEASUREMENTS response. Layouts from DMTF DSP0274 1.1.0:

* request, §10.11.1 (Table 40): SPDMVersion, RequestResponseCode 0xE0, Param1 (bit 0: signature
  requested), Param2 (measurement operation, 0xFF = all), Nonce (32), SlotIDParam (1);
* response, §10.11.2 (Table 43): SPDMVersion, ResponseCode 0x60, Param1, Param2,
  NumberOfBlocks (1), MeasurementRecordLength (3, LE), MeasurementRecord, Nonce (32),
  OpaqueLength (2, LE), OpaqueData, Signature (the responder's: ECDSA P-384 raw r||s here);
  bytes after the signature are no part of SPDM: they are counted (``trailing``), bounded by
  :data:`MAX_TRAILING_BYTES`, never signed and never read, as the TDX parser treats bytes after
  a quote's signature data;
* measurement block, §10.11.2.1 (Table 45): Index, MeasurementSpecification (bit 0 = DMTF),
  MeasurementSize (2), Measurement; DMTF measurement (Table 46): DMTFSpecMeasurementValueType,
  DMTFSpecMeasurementValueSize (2), DMTFSpecMeasurementValue.

OpaqueData is vendor-defined in SPDM 1.1; NVIDIA fills it with (type u16, size u16, value) fields,
ids as in nvtrust ``local_gpu_verifier`` ``OpaqueData`` (driver version, VBIOS version, FWID, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medclave.attestation.core import require_size
from medclave.errors import AttestationError

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_LENGTH = 37  # DSP0274 1.1 Table 40 with signature requested: 4 + 32 + 1
NONCE_LENGTH = 32
HEADER_LENGTH = 8  # version, code, param1, param2, NumberOfBlocks, 3-byte record length
P384_SIGNATURE_LENGTH = 96  # raw r||s, 48 bytes each
MAX_OPAQUE_LENGTH = 1024  # DSP0274 1.1 Table 43: OpaqueLength "shall be <= 1024"
# Evidence from Confidential Containers' attestation agent on a real H100 carries one zero byte
# after the signature (Trustee's verifier reads the signature and ignores the rest). A few bytes of
# slack are an encoding slip; more would be an unsigned payload riding on signed evidence.
MAX_TRAILING_BYTES = 64
SIGNATURE_REQUESTED = 0x01  # Param1 bit 0 of GET_MEASUREMENTS
ALL_MEASUREMENTS = 0xFF  # Param2 of GET_MEASUREMENTS: every block
DMTF_MEASUREMENT_SPEC = 0x01

# NVIDIA opaque data field ids (nvtrust OpaqueData.OpaqueDataFieldType).
OPAQUE_DRIVER_VERSION = 3
OPAQUE_GPU_INFO = 4
OPAQUE_VBIOS_VERSION = 6
OPAQUE_NVDEC0_STATUS = 11
OPAQUE_MSRSCNT = 12
OPAQUE_CPRINFO = 13
OPAQUE_BOARD_ID = 14
OPAQUE_CHIP_SKU = 15
OPAQUE_CHIP_SKU_MOD = 16
OPAQUE_PROJECT = 17
OPAQUE_PROJECT_SKU = 18
OPAQUE_PROJECT_SKU_MOD = 19
OPAQUE_FWID = 20
OPAQUE_PROTECTED_PCIE_STATUS = 21

OPAQUE_NAMES: Mapping[int, str] = {
    1: "cert_issuer_name",
    2: "cert_authority_key_identifier",
    OPAQUE_DRIVER_VERSION: "driver_version",
    OPAQUE_GPU_INFO: "gpu_info",
    5: "sku",
    OPAQUE_VBIOS_VERSION: "vbios_version",
    7: "manufacturer_id",
    8: "tamper_detection",
    9: "smc",
    10: "vpr",
    OPAQUE_NVDEC0_STATUS: "nvdec0_status",
    OPAQUE_MSRSCNT: "measurement_count",
    OPAQUE_CPRINFO: "cpr_info",
    OPAQUE_BOARD_ID: "board_id",
    OPAQUE_CHIP_SKU: "chip_sku",
    OPAQUE_CHIP_SKU_MOD: "chip_sku_mod",
    OPAQUE_PROJECT: "project",
    OPAQUE_PROJECT_SKU: "project_sku",
    OPAQUE_PROJECT_SKU_MOD: "project_sku_mod",
    OPAQUE_FWID: "fwid",
    OPAQUE_PROTECTED_PCIE_STATUS: "protected_pcie_status",
    22: "switch_pdi",
    23: "floorswept_ports",
    24: "position_id",
    25: "lock_switch_status",
    32: "gpu_link_conn",
    33: "sys_enable_status",
    34: "opaque_data_version",
    35: "chip_info",
    36: "feature_flag",
}

# Fields NVIDIA fills with NUL-padded ASCII (read as text by nvtrust and by trustee); the others
# are binary and reported as hex.
_TEXT_FIELDS = frozenset({
    OPAQUE_DRIVER_VERSION, OPAQUE_CHIP_SKU, OPAQUE_CHIP_SKU_MOD, OPAQUE_PROJECT, OPAQUE_PROJECT_SKU,
})
# One-byte statuses: trustee shows 0x55 as "U"; a non-printable status (0xAA) is shown as hex.
_STATUS_FIELDS = frozenset({OPAQUE_NVDEC0_STATUS, OPAQUE_PROTECTED_PCIE_STATUS})

# nvtrust config NVDEC_STATUS: 0xAA enabled, 0x55 disabled.
NVDEC_ENABLED = 0xAA

_HEX_TEXT = re.compile(rb"\A[0-9A-Fa-f\s]+\Z")


def _malformed(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", detail)


@dataclass(frozen=True)
class MeasurementRequest:
    """GET_MEASUREMENTS with signature requested (DSP0274 1.1 §10.11.1)."""

    version: int
    attributes: int
    operation: int
    nonce: bytes
    slot_id: int


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block (DSP0274 1.1 Tables 45, 46)."""

    index: int
    value_type: int  # DMTFSpecMeasurementValueType: bit 7 raw bit stream, bits 6:0 component
    value: bytes


@dataclass(frozen=True)
class OpaqueData:
    """NVIDIA's (type, size, value) fields, each type at most once."""

    fields: Mapping[int, bytes]

    def get(self, field_id: int) -> bytes | None:
        return self.fields.get(field_id)


@dataclass(frozen=True)
class AttestationReport:
    """A parsed request + response pair; ``signed`` is what the signature covers, ``trailing``
    the count of unsigned bytes after the signature (ignored)."""

    request: MeasurementRequest
    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: OpaqueData
    signature: bytes
    signed: bytes
    trailing: int = 0

    @property
    def measurements(self) -> dict[int, bytes]:
        return {b.index: b.value for b in self.blocks}


def decode_evidence(data: bytes) -> bytes:
    """Raw bytes from nvtrust's hex text (whitespace allowed) or from the binary itself."""
    require_size(data)
    if data[:2] == bytes((SPDM_VERSION_1_1, GET_MEASUREMENTS)):
        return data
    if not _HEX_TEXT.match(data):
        raise _malformed("NVIDIA evidence is neither hex text nor a binary SPDM request")
    try:
        return bytes.fromhex(data.decode("ascii"))
    except ValueError as exc:
        raise _malformed(f"NVIDIA evidence hex does not decode: {exc}") from exc


def looks_like_evidence(data: bytes) -> bool:
    """Cheap sniff for ``detect``: a GET_MEASUREMENTS 1.1 request at the start, hex or binary."""
    if data[:2] == bytes((SPDM_VERSION_1_1, GET_MEASUREMENTS)):
        return len(data) > REQUEST_LENGTH + HEADER_LENGTH
    head = data[:16].lstrip()
    return head[:4].lower() == b"11e0" and bool(_HEX_TEXT.match(data[:4096]))


class _Reader:
    """Bounds-checked cursor: every read names its field, so a short input says what is missing."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.pos = offset

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _malformed(f"{what}: needs {n} bytes at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "little")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def parse_request(raw: bytes) -> MeasurementRequest:
    r = _Reader(raw)
    version = r.u8("request SPDMVersion")
    code = r.u8("request code")
    if code != GET_MEASUREMENTS:
        raise _malformed(f"request code 0x{code:02x} is not GET_MEASUREMENTS (0xE0)")
    if version != SPDM_VERSION_1_1:
        raise AttestationError("attestation.unsupported_version",
                               f"SPDM version 0x{version:02x}; only 1.1 (0x11) is supported")
    attributes = r.u8("request Param1")
    operation = r.u8("request Param2")
    if not attributes & SIGNATURE_REQUESTED:
        raise _malformed("GET_MEASUREMENTS did not request a signature (Param1 bit 0)")
    if operation != ALL_MEASUREMENTS:
        raise _malformed(f"GET_MEASUREMENTS operation 0x{operation:02x}; expected 0xFF (all)")
    nonce = r.take(NONCE_LENGTH, "request Nonce")
    slot_id = r.u8("request SlotIDParam")
    return MeasurementRequest(version, attributes, operation, nonce, slot_id)


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record)
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for n in range(count):
        index = r.u8(f"block {n} Index")
        spec = r.u8(f"block {n} MeasurementSpecification")
        size = r.uint(2, f"block {n} MeasurementSize")
        body = _Reader(r.take(size, f"block {n} Measurement"))
        if spec != DMTF_MEASUREMENT_SPEC:
            raise _malformed(f"block {index}: MeasurementSpecification 0x{spec:02x} is not DMTF")
        # DSP0274 1.1 §10.11.2.1: indices 0x00 and 0xFF are reserved for blocks.
        if index in (0x00, 0xFF) or index in seen:
            raise _malformed(f"block index {index} reserved or repeated")
        seen.add(index)
        value_type = body.u8(f"block {index} DMTFSpecMeasurementValueType")
        value_size = body.uint(2, f"block {index} DMTFSpecMeasurementValueSize")
        value = body.take(value_size, f"block {index} DMTFSpecMeasurementValue")
        if body.left:
            raise _malformed(f"block {index}: {body.left} bytes beyond its DMTF measurement")
        blocks.append(MeasurementBlock(index, value_type, value))
    if r.left:
        raise _malformed(f"{r.left} bytes in MeasurementRecord beyond NumberOfBlocks")
    return tuple(blocks)


def parse_opaque(raw: bytes) -> OpaqueData:
    r = _Reader(raw)
    fields: dict[int, bytes] = {}
    while r.left:
        field_id = r.uint(2, "opaque field type")
        size = r.uint(2, f"opaque field {field_id} size")
        value = r.take(size, f"opaque field {field_id} value")
        # A second driver_version or FWID would make the claims ambiguous: refuse.
        if field_id in fields:
            raise _malformed(f"opaque field {field_id} repeated")
        fields[field_id] = value
    return OpaqueData(fields)


def parse_report(data: bytes) -> AttestationReport:
    """Parse hex text or binary evidence; raises ``attestation.malformed`` on any inconsistency."""
    raw = decode_evidence(data)
    request = parse_request(raw[:REQUEST_LENGTH])
    r = _Reader(raw, REQUEST_LENGTH)
    version = r.u8("response SPDMVersion")
    code = r.u8("response code")
    if code != MEASUREMENTS:
        raise _malformed(f"response code 0x{code:02x} is not MEASUREMENTS (0x60)")
    if version != request.version:
        raise AttestationError("attestation.unsupported_version",
                               f"response version 0x{version:02x} differs from the request's")
    param1 = r.u8("response Param1")
    param2 = r.u8("response Param2")
    count = r.u8("NumberOfBlocks")
    record_length = r.uint(3, "MeasurementRecordLength")
    blocks = _parse_blocks(r.take(record_length, "MeasurementRecord"), count)
    responder_nonce = r.take(NONCE_LENGTH, "response Nonce")
    opaque_length = r.uint(2, "OpaqueLength")
    if opaque_length > MAX_OPAQUE_LENGTH:
        raise _malformed(f"OpaqueLength {opaque_length} exceeds 1024 (DSP0274 1.1 Table 43)")
    opaque = parse_opaque(r.take(opaque_length, "OpaqueData"))
    if r.left < P384_SIGNATURE_LENGTH:
        raise _malformed(f"{r.left} bytes after OpaqueData; an ECDSA P-384 signature is 96")
    trailing = r.left - P384_SIGNATURE_LENGTH
    if trailing > MAX_TRAILING_BYTES:
        raise _malformed(f"{trailing} bytes after the 96-byte signature; at most "
                         f"{MAX_TRAILING_BYTES} unsigned bytes are ignored")
    signed_end = r.pos
    signature = r.take(P384_SIGNATURE_LENGTH, "Signature")
    return AttestationReport(
        request=request,
        version=version,
        param1=param1,
        param2=param2,
        blocks=blocks,
        responder_nonce=responder_nonce,
        opaque=opaque,
        signature=signature,
        signed=raw[:signed_end],
        trailing=trailing,
    )


def _text(value: bytes, name: str) -> str:
    text = value.rstrip(b"\x00")
    if not text.isascii() or not all(0x20 <= c < 0x7F for c in text):
        raise _malformed(f"opaque field {name} is not printable ASCII")
    return text.decode("ascii")


def format_vbios_version(value: bytes) -> str:
    """``96.00.9f.00.01`` from the 8-byte little-endian field, as nvtrust formats it.

    The low 32 bits are the four leading groups, most significant first; the next byte is the
    fifth (nvtrust ``utils.format_vbios_version``).
    """
    if len(value) != 8:
        raise _malformed(f"VBIOS version field is {len(value)} bytes, expected 8")
    number = int.from_bytes(value, "little")
    low = (number & 0xFFFFFFFF).to_bytes(4, "big")
    high = (number >> 32) & 0xFF
    return ".".join(f"{b:02x}" for b in (*low, high))


def opaque_claims(opaque: OpaqueData) -> dict[str, Any]:
    """Every known opaque field by name; unknown ids under ``opaque_unknown`` as hex."""
    out: dict[str, Any] = {}
    unknown: dict[str, str] = {}
    for field_id, value in sorted(opaque.fields.items()):
        name = OPAQUE_NAMES.get(field_id)
        if name is None:
            unknown[str(field_id)] = value.hex()
        elif field_id == OPAQUE_VBIOS_VERSION:
            out[name] = format_vbios_version(value)
        elif field_id == OPAQUE_MSRSCNT:
            if len(value) % 4:
                raise _malformed("measurement count field is not a whole number of u32s")
            out[name] = {
                str(i + 1): int.from_bytes(value[i * 4:i * 4 + 4], "little")
                for i in range(len(value) // 4)
            }
        elif field_id in _TEXT_FIELDS:
            out[name] = _text(value, name)
        elif field_id in _STATUS_FIELDS and len(value) == 1 and 0x20 <= value[0] < 0x7F:
            out[name] = chr(value[0])
        else:
            out[name] = value.hex()
    if unknown:
        out["opaque_unknown"] = unknown
    return out


def report_claims(report: AttestationReport) -> dict[str, Any]:
    """The claims a policy reads. Keys of ``measurements`` are block indices as strings (JSON)."""
    claims: dict[str, Any] = {
        "spdm_version": f"{report.version >> 4}.{report.version & 0xF}",
        "nonce": report.request.nonce.hex(),
        "slot_id": report.request.slot_id,
        "block_count": len(report.blocks),
        "measurements": {str(b.index): b.value.hex() for b in report.blocks},
    }
    claims.update(opaque_claims(report.opaque))
    nvdec = report.opaque.get(OPAQUE_NVDEC0_STATUS)
    claims["nvdec0_enabled"] = nvdec is not None and nvdec[:1] == bytes((NVDEC_ENABLED,))
    return claims
