"""The SEV-SNP ATTESTATION_REPORT structure: bytes in, a frozen :class:`Report` out, no crypto.

Offsets follow AMD's SEV-SNP Firmware ABI specification (publication 56860), table
"ATTESTATION_REPORT Structure". Versions 2, 3 and 5 are accepted:

- v3 adds CPUID_FAM_ID / CPUID_MOD_ID / CPUID_STEP at 0x188..0x18A;
- v5 adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200).

Any other version (4 included) is refused with ``attestation.unsupported_version``: no vector
here shows its layout, and reading signed bytes under a guessed layout would fail open.

Every must-be-zero range the specification names is checked, so a re-encoding of the parsed
fields is byte-identical to the input (:func:`encode_report`), and nothing signed goes unread.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from medclave.errors import AttestationError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes [0, 0x2A0) (spec 56860, ATTESTATION_REPORT)
SIGNATURE_OFFSET = 0x2A0
ECDSA_COMPONENT_SIZE = 72  # r and s, little-endian, zero-extended (spec 56860, "ECDSA Signature")
SIG_ALGO_ECDSA_P384_SHA384 = 1
SUPPORTED_VERSIONS: frozenset[int] = frozenset({2, 3, 5})
# Hex text of a report: 2368 digits plus generous room for line breaks and indentation.
MAX_HEX_TEXT = 4 * REPORT_SIZE

Product = Literal["Milan", "Genoa", "Turin"]
PRODUCTS: tuple[Product, ...] = ("Milan", "Genoa", "Turin")
SigningKey = Literal["vcek", "vlek", "none"]

# GUEST POLICY bits (spec 56860, "Guest Policy Structure").
_POLICY_SMT = 16
_POLICY_RESERVED_ONE = 17
_POLICY_MIGRATE_MA = 18
_POLICY_DEBUG = 19
_POLICY_SINGLE_SOCKET = 20
_POLICY_CXL_ALLOW = 21
_POLICY_MEM_AES_256_XTS = 22
_POLICY_RAPL_DIS = 23
_POLICY_CIPHERTEXT_HIDING = 24
_POLICY_PAGE_SWAP_DISABLE = 25
_POLICY_MBZ_MASK = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF

# PLATFORM_INFO bits (spec 56860, "PLATFORM_INFO Field"); later bits are reported, not refused.
_PLATFORM_INFO_BITS: tuple[tuple[int, str], ...] = (
    (0, "smt_enabled"),
    (1, "tsme_enabled"),
    (2, "ecc_enabled"),
    (3, "rapl_disabled"),
    (4, "ciphertext_hiding_enabled"),
    (5, "alias_check_complete"),
)

_ZERO_CHIP_ID = bytes(64)


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def _u64(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])


# --- TCB_VERSION -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbParts:
    """A TCB_VERSION split into its security patch levels (SPLs).

    Milan/Genoa layout: byte 0 boot loader, 1 TEE, 2..5 reserved, 6 SNP, 7 microcode.
    Turin layout: byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 4..6 reserved, 7 microcode.
    ``reserved`` keeps the reserved bytes so that :meth:`encode` is exact.
    """

    bl: int
    tee: int
    snp: int
    ucode: int
    fmc: int | None = None  # Turin only
    reserved: tuple[int, ...] = (0, 0, 0, 0)

    @property
    def turin(self) -> bool:
        return self.fmc is not None

    def encode(self) -> int:
        if self.fmc is not None:
            b = [self.fmc, self.bl, self.tee, self.snp, *self.reserved[:3], self.ucode]
        else:
            b = [self.bl, self.tee, *self.reserved[:4], self.snp, self.ucode]
        return int.from_bytes(bytes(b), "little")

    def to_dict(self) -> dict[str, int]:
        out = {"bl": self.bl, "tee": self.tee, "snp": self.snp, "ucode": self.ucode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


def tcb_layout_is_turin(product: Product | None) -> bool:
    return product == "Turin"


def decode_tcb(raw: int, product: Product | None) -> TcbParts:
    """Split a TCB_VERSION; the layout depends on the product (Turin differs)."""
    b = raw.to_bytes(8, "little")
    if tcb_layout_is_turin(product):
        return TcbParts(fmc=b[0], bl=b[1], tee=b[2], snp=b[3], reserved=(b[4], b[5], b[6]),
                        ucode=b[7])
    return TcbParts(bl=b[0], tee=b[1], reserved=(b[2], b[3], b[4], b[5]), snp=b[6], ucode=b[7])


# --- decoded bit fields ------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestPolicy:
    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allow: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool

    def to_dict(self) -> dict[str, int | bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def decode_policy(raw: int) -> GuestPolicy:
    """Decode POLICY; bit 17 must be one and bits 63:26 zero (spec 56860, Guest Policy)."""
    if not raw & (1 << _POLICY_RESERVED_ONE):
        raise AttestationError("attestation.malformed", "guest policy bit 17 (reserved, MB1) is 0")
    if raw & _POLICY_MBZ_MASK:
        raise AttestationError(
            "attestation.reserved_nonzero", f"guest policy reserved bits 63:26 set: {raw:#x}"
        )

    def bit(n: int) -> bool:
        return bool(raw >> n & 1)

    return GuestPolicy(
        abi_minor=raw & 0xFF,
        abi_major=raw >> 8 & 0xFF,
        smt=bit(_POLICY_SMT),
        migrate_ma=bit(_POLICY_MIGRATE_MA),
        debug=bit(_POLICY_DEBUG),
        single_socket=bit(_POLICY_SINGLE_SOCKET),
        cxl_allow=bit(_POLICY_CXL_ALLOW),
        mem_aes_256_xts=bit(_POLICY_MEM_AES_256_XTS),
        rapl_dis=bit(_POLICY_RAPL_DIS),
        ciphertext_hiding=bit(_POLICY_CIPHERTEXT_HIDING),
        page_swap_disable=bit(_POLICY_PAGE_SWAP_DISABLE),
    )


def decode_platform_info(raw: int) -> dict[str, bool | int]:
    out: dict[str, bool | int] = {name: bool(raw >> n & 1) for n, name in _PLATFORM_INFO_BITS}
    known = sum(1 << n for n, _ in _PLATFORM_INFO_BITS)
    out["unknown_bits"] = raw & ~known
    return out


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Product line from the report's CPUID family/model (v3+).

    Family 19h: models 0xh Milan, 1xh and Axh Genoa (Genoa, Bergamo, Siena share the Genoa
    ARK); family 1Ah models 0xh..1xh Turin (incl. Turin dense). Anything else is unknown.
    """
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Report:
    """One ATTESTATION_REPORT. Integers are the little-endian field values; byte strings are
    copied verbatim. ``raw`` holds the exact bytes parsed (empty for a report built in code)."""

    version: int = 2
    guest_svn: int = 0
    policy: int = 1 << _POLICY_RESERVED_ONE
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIG_ALGO_ECDSA_P384_SHA384
    current_tcb: int = 0
    platform_info: int = 0
    key_info: int = 0  # bit 0 AUTHOR_KEY_EN, 1 MASK_CHIP_KEY, 4:2 SIGNING_KEY
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = bytes(32)
    reported_tcb: int = 0
    cpuid_fam_id: int | None = None  # v3+
    cpuid_mod_id: int | None = None
    cpuid_step: int | None = None
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    launch_tcb: int = 0
    launch_mit_vector: int | None = None  # v5
    current_mit_vector: int | None = None
    signature_r: bytes = bytes(ECDSA_COMPONENT_SIZE)  # little-endian
    signature_s: bytes = bytes(ECDSA_COMPONENT_SIZE)
    raw: bytes = field(default=b"", repr=False, compare=False)

    # -- derived views ------------------------------------------------------------------------

    @property
    def signed_bytes(self) -> bytes:
        return (self.raw or encode_report(self))[:SIGNED_SIZE]

    @property
    def signing_key(self) -> SigningKey:
        code = self.key_info >> 2 & 7
        return "vcek" if code == 0 else "vlek" if code == 1 else "none"

    @property
    def mask_chip_key(self) -> bool:
        """The host set MASK_CHIP_KEY: the report is not signed (signature all zero)."""
        return bool(self.key_info & 2)

    @property
    def author_key_en(self) -> bool:
        return bool(self.key_info & 1)

    @property
    def mask_chip_id(self) -> bool:
        """The host set MASK_CHIP_ID (SNP_CONFIG): CHIP_ID is reported as all zero."""
        return self.chip_id == _ZERO_CHIP_ID

    @property
    def cpuid_product(self) -> Product | None:
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def guest_policy(self) -> GuestPolicy:
        return decode_policy(self.policy)

    @property
    def signature_rs(self) -> tuple[int, int]:
        return (int.from_bytes(self.signature_r, "little"),
                int.from_bytes(self.signature_s, "little"))

    def tcb(self, which: str, product: Product | None) -> TcbParts:
        """``which`` is one of current_tcb, reported_tcb, committed_tcb, launch_tcb."""
        if which not in _TCB_FIELDS:
            raise ValueError(f"not a TCB field: {which}")
        return decode_tcb(int(getattr(self, which)), product)

    @staticmethod
    def parse(data: bytes) -> Report:
        return parse_report(data)


_TCB_FIELDS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")


def _mbz(data: bytes, lo: int, hi: int, what: str) -> None:
    if any(data[lo:hi]):
        raise AttestationError(
            "attestation.reserved_nonzero",
            f"reserved bytes [{lo:#x}, {hi:#x}) ({what}) are not zero: {data[lo:hi].hex()}",
        )


_HEX_TEXT = re.compile(rb"[0-9a-fA-F]+")
_WHITESPACE = re.compile(rb"\s+")


def report_bytes(data: bytes) -> bytes:
    """The 1184 report bytes from binary input or hex text (whitespace ignored)."""
    if len(data) == REPORT_SIZE:
        return bytes(data)
    if len(data) > MAX_HEX_TEXT:
        raise AttestationError(
            "attestation.malformed", f"report is {len(data)} bytes; an SNP report is {REPORT_SIZE}"
        )
    text = _WHITESPACE.sub(b"", data)
    if len(text) != 2 * REPORT_SIZE or not _HEX_TEXT.fullmatch(text):
        raise AttestationError(
            "attestation.malformed",
            f"not an SNP report: {len(data)} bytes, neither {REPORT_SIZE} binary nor hex text",
        )
    return bytes.fromhex(text.decode("ascii"))


def parse_report(data: bytes) -> Report:
    """Parse and structurally check a report (binary or hex text). No signature check here."""
    d = report_bytes(data)
    version = _u32(d, 0x00)
    if version not in SUPPORTED_VERSIONS:
        raise AttestationError(
            "attestation.unsupported_version",
            f"SNP report version {version}; supported: {sorted(SUPPORTED_VERSIONS)}",
        )
    algo = _u32(d, 0x34)
    if algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise AttestationError(
            "attestation.malformed", f"signature algorithm {algo}; only 1 (ECDSA P-384) is defined"
        )
    policy = _u64(d, 0x08)
    decode_policy(policy)
    vmpl = _u32(d, 0x30)
    if vmpl > 3:
        raise AttestationError("attestation.malformed", f"VMPL {vmpl} is not 0..3")
    key_info = _u32(d, 0x48)
    if key_info >> 5:
        raise AttestationError(
            "attestation.reserved_nonzero", f"KEY_INFO reserved bits 31:5 set: {key_info:#x}"
        )
    if 2 <= (key_info >> 2 & 7) <= 6:
        raise AttestationError(
            "attestation.malformed", f"KEY_INFO.SIGNING_KEY {key_info >> 2 & 7} is reserved"
        )
    _mbz(d, 0x4C, 0x50, "after KEY_INFO")
    v3 = version >= 3
    _mbz(d, 0x18B if v3 else 0x188, 0x1A0, "after REPORTED_TCB")
    _mbz(d, 0x1EB, 0x1EC, "after CURRENT_MAJOR")
    _mbz(d, 0x1EF, 0x1F0, "after COMMITTED_MAJOR")
    v5 = version >= 5
    _mbz(d, 0x208 if v5 else 0x1F8, SIGNED_SIZE, "before SIGNATURE")
    # ECDSA P-384 uses the first 144 bytes of the 512-byte signature field; the rest is MBZ.
    _mbz(d, SIGNATURE_OFFSET + 2 * ECDSA_COMPONENT_SIZE, REPORT_SIZE, "signature tail")
    return Report(
        version=version,
        guest_svn=_u32(d, 0x04),
        policy=policy,
        family_id=d[0x10:0x20],
        image_id=d[0x20:0x30],
        vmpl=vmpl,
        signature_algo=algo,
        current_tcb=_u64(d, 0x38),
        platform_info=_u64(d, 0x40),
        key_info=key_info,
        report_data=d[0x50:0x90],
        measurement=d[0x90:0xC0],
        host_data=d[0xC0:0xE0],
        id_key_digest=d[0xE0:0x110],
        author_key_digest=d[0x110:0x140],
        report_id=d[0x140:0x160],
        report_id_ma=d[0x160:0x180],
        reported_tcb=_u64(d, 0x180),
        cpuid_fam_id=d[0x188] if v3 else None,
        cpuid_mod_id=d[0x189] if v3 else None,
        cpuid_step=d[0x18A] if v3 else None,
        chip_id=d[0x1A0:0x1E0],
        committed_tcb=_u64(d, 0x1E0),
        current_build=d[0x1E8],
        current_minor=d[0x1E9],
        current_major=d[0x1EA],
        committed_build=d[0x1EC],
        committed_minor=d[0x1ED],
        committed_major=d[0x1EE],
        launch_tcb=_u64(d, 0x1F0),
        launch_mit_vector=_u64(d, 0x1F8) if v5 else None,
        current_mit_vector=_u64(d, 0x200) if v5 else None,
        signature_r=d[SIGNATURE_OFFSET:SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE],
        signature_s=d[SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE:
                      SIGNATURE_OFFSET + 2 * ECDSA_COMPONENT_SIZE],
        raw=d,
    )


def _put(buf: bytearray, offset: int, value: bytes, size: int, name: str) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    buf[offset:offset + size] = value


def encode_report(r: Report) -> bytes:
    """The ABI bytes of ``r`` (its ``raw`` ignored). Used by the sim platform and tests; for a
    parsed report the result equals the input, because every non-reserved byte is a field."""
    b = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", b, 0x00, r.version, r.guest_svn, r.policy)
    _put(b, 0x10, r.family_id, 16, "family_id")
    _put(b, 0x20, r.image_id, 16, "image_id")
    struct.pack_into("<IIQQI", b, 0x30, r.vmpl, r.signature_algo, r.current_tcb,
                     r.platform_info, r.key_info)
    _put(b, 0x50, r.report_data, 64, "report_data")
    _put(b, 0x90, r.measurement, 48, "measurement")
    _put(b, 0xC0, r.host_data, 32, "host_data")
    _put(b, 0xE0, r.id_key_digest, 48, "id_key_digest")
    _put(b, 0x110, r.author_key_digest, 48, "author_key_digest")
    _put(b, 0x140, r.report_id, 32, "report_id")
    _put(b, 0x160, r.report_id_ma, 32, "report_id_ma")
    struct.pack_into("<Q", b, 0x180, r.reported_tcb)
    if r.version >= 3:
        b[0x188:0x18B] = bytes([r.cpuid_fam_id or 0, r.cpuid_mod_id or 0, r.cpuid_step or 0])
    _put(b, 0x1A0, r.chip_id, 64, "chip_id")
    struct.pack_into("<Q", b, 0x1E0, r.committed_tcb)
    b[0x1E8:0x1EB] = bytes([r.current_build, r.current_minor, r.current_major])
    b[0x1EC:0x1EF] = bytes([r.committed_build, r.committed_minor, r.committed_major])
    struct.pack_into("<Q", b, 0x1F0, r.launch_tcb)
    if r.version >= 5:
        struct.pack_into("<QQ", b, 0x1F8, r.launch_mit_vector or 0, r.current_mit_vector or 0)
    _put(b, SIGNATURE_OFFSET, r.signature_r, ECDSA_COMPONENT_SIZE, "signature_r")
    _put(b, SIGNATURE_OFFSET + ECDSA_COMPONENT_SIZE, r.signature_s, ECDSA_COMPONENT_SIZE,
         "signature_s")
    return bytes(b)


def signature_fields(r: int, s: int) -> tuple[bytes, bytes]:
    """ECDSA (r, s) as the report's little-endian 72-byte fields."""
    return r.to_bytes(ECDSA_COMPONENT_SIZE, "little"), s.to_bytes(ECDSA_COMPONENT_SIZE, "little")


def looks_like_report(data: bytes) -> bool:
    """Cheap sniffing for ``detect``: size, version, algorithm, VMPL and policy bit 17."""
    try:
        d = report_bytes(data)
    except AttestationError:
        return False
    return (
        _u32(d, 0) in SUPPORTED_VERSIONS
        and _u32(d, 0x34) == SIG_ALGO_ECDSA_P384_SHA384
        and _u32(d, 0x30) <= 3
        and bool(_u64(d, 0x08) >> _POLICY_RESERVED_ONE & 1)
    )


def fw_version(major: int, minor: int, build: int) -> str:
    return f"{major}.{minor}.{build}"


def hex_u64(value: int) -> str:
    """u64 claims are 16 lower-case hex digits of the integer value (most significant first)."""
    return f"{value:016x}"


def as_dict(r: Report) -> dict[str, Any]:
    """All fields with bytes as lower-case hex (for debugging and the CLI's raw view)."""
    out: dict[str, Any] = {}
    for f in fields(r):
        if f.name == "raw":
            continue
        v = getattr(r, f.name)
        out[f.name] = v.hex() if isinstance(v, bytes) else v
    return out
