"""The Azure HCL report: the hardware report that vouches for the vTPM's attestation key.

On an Azure confidential VM the paravisor (HCL, at VMPL 0 / in the TD) asks the hardware for a
report whose report_data is a hash of a JSON "variable data" blob holding the vTPM's attestation
key (HCLAkPub) and endorsement key (HCLEkPub). It stores the result in TPM NV index 0x01400001:

    offset  size  field (all integers little-endian)
         0    32  attestation header: "HCLA", version, report_size, request_type, status, reserved
        32  1184  hardware report: SEV-SNP ATTESTATION_REPORT (1184 B) or TDREPORT_STRUCT (1024 B)
      1216    20  IGVM request data: data_size, version, report_type, report_data_hash_type,
                  variable_data_size
      1236     n  variable data (JSON), n = variable_data_size

Only the hardware report is signed; the header and request data are not, so nothing is trusted
from them except through the hash that report_data binds (Azure "Guest attestation" docs; layout
as in Microsoft's az-cvm-vtpm ``hcl`` module).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import rsa

from medclave.attestation.core import CheckLog
from medclave.attestation.vtpm import tpm2
from medclave.attestation.vtpm._codec import b64url_bytes, malformed, strict_json
from medclave.errors import AttestationError

HCL_SIGNATURE = b"HCLA"
HEADER_SIZE = 32
HW_REPORT_OFFSET = HEADER_SIZE
HW_REPORT_AREA = 1184  # the larger of the two hardware reports
SNP_REPORT_SIZE = 1184  # AMD SEV-SNP ABI §7.3, Table 22 ATTESTATION_REPORT
TD_REPORT_SIZE = 1024  # Intel TDX module ABI, TDREPORT_STRUCT
REQUEST_OFFSET = HW_REPORT_OFFSET + HW_REPORT_AREA
REQUEST_SIZE = 20
VAR_DATA_OFFSET = REQUEST_OFFSET + REQUEST_SIZE
MAX_HCL_BYTES = 16 * 1024
MAX_VAR_DATA_BYTES = 8 * 1024
MAX_KEYS = 16
MAX_USER_DATA_CHARS = 1024

# IGVM request data report_type and report_data_hash_type (az-cvm-vtpm IgvmRequestData).
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
_HASHES: dict[int, str] = {1: "sha256", 2: "sha384", 3: "sha512"}

# SEV-SNP ATTESTATION_REPORT (ABI §7.3 Table 22): VMPL at 0x30, REPORT_DATA at 0x50..0x90.
SNP_VMPL_OFFSET = 0x30
SNP_REPORT_DATA_OFFSET = 0x50
# TDREPORT_STRUCT: REPORTMACSTRUCT.REPORTDATA at 128..192 (TDX module ABI, Table "REPORTMACSTRUCT").
TD_REPORT_DATA_OFFSET = 128

_SAFE_INT = 2**53 - 1
AK_KID = "HCLAkPub"
EK_KID = "HCLEkPub"

ReportType = Literal["snp", "tdx"]


@dataclass(frozen=True)
class HclReport:
    """The parsed envelope. ``hw_report`` is exactly the SNP report or the TD report."""

    version: int
    report_type: ReportType
    hw_report: bytes
    hash_type: str
    var_data: bytes

    @property
    def hw_report_data(self) -> bytes:
        """report_data as the hardware report states it (authentic only once it is verified)."""
        offset = SNP_REPORT_DATA_OFFSET if self.report_type == "snp" else TD_REPORT_DATA_OFFSET
        return self.hw_report[offset : offset + 64]

    def expected_report_data(self) -> bytes:
        """H(variable data) zero-padded to 64 bytes, H the request's report_data_hash_type."""
        return hashlib.new(self.hash_type, self.var_data).digest().ljust(64, b"\0")


@dataclass(frozen=True)
class VarData:
    """The variable data JSON: the vTPM keys the hardware report vouches for."""

    ak_public: rsa.RSAPublicKey
    ek_fingerprint: str | None
    user_data: str | None
    vm_configuration: dict[str, Any]

    def claims(self) -> dict[str, Any]:
        return {
            "ak_public": tpm2.key_fingerprint(self.ak_public),
            "ek_public": self.ek_fingerprint,
            "user_data": self.user_data,
            "vm_configuration": self.vm_configuration,
        }


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse the envelope; the variable data is returned raw, to be hashed before it is read."""
    if len(data) > MAX_HCL_BYTES:
        raise malformed(f"HCL report is {len(data)} bytes, over {MAX_HCL_BYTES}")
    if len(data) < VAR_DATA_OFFSET:
        raise malformed(f"HCL report is {len(data)} bytes, shorter than its fixed part")
    if data[:4] != HCL_SIGNATURE:
        raise malformed("HCL report does not start with 'HCLA'")
    version = struct.unpack_from("<I", data, 4)[0]
    data_size, _req_version, report_type, hash_type, var_size = struct.unpack_from(
        "<5I", data, REQUEST_OFFSET
    )
    if report_type == REPORT_TYPE_SNP:
        kind: ReportType = "snp"
        hw_report = data[HW_REPORT_OFFSET : HW_REPORT_OFFSET + SNP_REPORT_SIZE]
    elif report_type == REPORT_TYPE_TDX:
        kind = "tdx"
        hw_report = data[HW_REPORT_OFFSET : HW_REPORT_OFFSET + TD_REPORT_SIZE]
    else:
        raise malformed(f"HCL hardware report type {report_type} is neither SNP (2) nor TDX (4)")
    hash_name = _HASHES.get(hash_type)
    if hash_name is None:
        raise malformed(f"HCL report_data hash type {hash_type} is not SHA-256/384/512")
    if var_size > MAX_VAR_DATA_BYTES or VAR_DATA_OFFSET + var_size > len(data):
        raise malformed(f"HCL variable data size {var_size} exceeds the report")
    # data_size counts the request header and the variable data; a mismatch means the two
    # length fields disagree about where the hashed bytes end, so neither is believed.
    if data_size != REQUEST_SIZE + var_size:
        raise malformed(f"HCL request data_size {data_size} != 20 + variable_data_size {var_size}")
    return HclReport(
        version=version,
        report_type=kind,
        hw_report=hw_report,
        hash_type=hash_name,
        var_data=data[VAR_DATA_OFFSET : VAR_DATA_OFFSET + var_size],
    )


def check_binding(hcl: HclReport, report_data: bytes, *, log: CheckLog, source: str) -> None:
    """report_data = H(variable data) || zeros: the hardware vouches for the vTPM keys."""
    name = "HCL binding"
    expected = hcl.expected_report_data()
    if len(report_data) != 64 or not hmac.compare_digest(report_data, expected):
        raise log.fail(name, "attestation.binding_mismatch",
                       f"{source} report_data {report_data.hex()[:16]}… is not "
                       f"{hcl.hash_type}(variable data) {expected.hex()[:16]}… zero-padded")
    log.ok(name, f"{source} report_data = {hcl.hash_type}(variable data) || zeros")


def _rsa_jwk(jwk: dict[str, Any], kid: str) -> rsa.RSAPublicKey:
    """An RSA public JWK (RFC 7518 §6.3.1): n and e as unpadded base64url big-endian integers."""
    if jwk.get("kty") != "RSA":
        raise malformed(f"{kid} is not an RSA JWK")
    n = b64url_bytes(jwk.get("n"), what=f"{kid}.n", maximum=1024)
    e = b64url_bytes(jwk.get("e"), what=f"{kid}.e", maximum=8)
    if not n or not e or n[0] == 0 or e[0] == 0:
        # RFC 7518 §6.3.1.1: minimal encoding; a leading zero octet would be a second spelling.
        raise malformed(f"{kid} modulus or exponent is empty or not minimally encoded")
    try:
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    except ValueError as exc:
        raise malformed(f"{kid} is not a valid RSA public key: {exc}") from exc


def parse_var_data(var_data: bytes) -> VarData:
    """Parse the variable data JSON; exactly one HCLAkPub, an RSA key (Azure vTPM AK)."""
    obj = strict_json(var_data, what="HCL variable data", maximum=MAX_VAR_DATA_BYTES)
    if not isinstance(obj, dict):
        raise malformed("HCL variable data is not a JSON object")
    keys = obj.get("keys")
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        raise malformed("HCL variable data has no 'keys' list")
    by_kid: dict[str, dict[str, Any]] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            raise malformed("HCL variable data key is not a JWK with a kid")
        if jwk["kid"] in by_kid:
            raise malformed(f"HCL variable data names key {jwk['kid']!r} twice")
        by_kid[jwk["kid"]] = jwk
    if AK_KID not in by_kid:
        raise malformed("HCL variable data holds no HCLAkPub")
    ak = _rsa_jwk(by_kid[AK_KID], AK_KID)
    ek = _rsa_jwk(by_kid[EK_KID], EK_KID) if EK_KID in by_kid else None
    user_data = obj.get("user-data")
    if user_data is not None and (not isinstance(user_data, str)
                                  or len(user_data) > MAX_USER_DATA_CHARS):
        raise malformed("HCL variable data user-data is not a short string")
    vm_config = obj.get("vm-configuration", {})
    if not isinstance(vm_config, dict):
        raise malformed("HCL variable data vm-configuration is not an object")
    # Claims are signed again (EAR, RFC 8785): keep the scalar settings a policy can compare,
    # within the integer range every JSON implementation agrees on.
    vm_config = {k: v for k, v in vm_config.items()
                 if isinstance(v, str | bool) or (type(v) is int and abs(v) <= _SAFE_INT)}
    return VarData(
        ak_public=ak,
        ek_fingerprint=tpm2.key_fingerprint(ek) if ek is not None else None,
        user_data=user_data,
        vm_configuration=vm_config,
    )


def snp_vmpl(hw_report: bytes) -> int:
    vmpl: int = struct.unpack_from("<I", hw_report, SNP_VMPL_OFFSET)[0]
    return vmpl


def check_snp_vmpl(hcl: HclReport, *, log: CheckLog) -> None:
    """The HCL runs at VMPL 0; a report requested at a higher VMPL came from code below it,
    which could have put any key in the variable data (Azure CVM paravisor model)."""
    name = "SNP report VMPL"
    vmpl = snp_vmpl(hcl.hw_report)
    if vmpl != 0:
        raise log.fail(name, "attestation.binding_mismatch",
                       f"report requested at VMPL {vmpl}, not by the HCL at VMPL 0")
    log.ok(name, "VMPL 0 (the HCL)")


def parse_error(exc: AttestationError, log: CheckLog, name: str) -> AttestationError:
    """Re-raise a parsing error as a failed step of ``log``."""
    return log.fail(name, exc.code, exc.detail)
