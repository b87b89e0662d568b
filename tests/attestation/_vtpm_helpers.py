"""Builders shared by the vTPM tests: evidence composed from the real vectors, and synthetic TPM
structures marshalled by hand (TPM 2.0 Part 2) for the schemes the vectors do not cover."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from medclave.attestation.vtpm import hcl, tpm2
from medclave.attestation.x509chain import load_certificates

SNP_DIR = "vtpm/az-snp-vtpm"
PCR0_V0 = "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"
CHALLENGE = b"challenge"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_json(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_bytes())
    return value


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def composed_v1(vectors: Path) -> bytes:
    """V1 ``hcl-report.bin`` + ``tpm-quote-v1.json`` + the VCEK of ``vcek.pem`` as v1 evidence."""
    d = vectors / SNP_DIR
    vcek = load_certificates((d / "vcek.pem").read_bytes())[0]  # tolerates AMD's serial 0
    return dumps({
        "version": 1,
        "tpm_quote": read_json(d / "tpm-quote-v1.json"),
        "hcl_report": b64url((d / "hcl-report.bin").read_bytes()),
        "vcek": b64url(vcek.public_bytes(serialization.Encoding.DER)),
    })


def composed_v0(vectors: Path) -> bytes:
    """The same as v0 evidence, whose ``vcek`` PEM carries the whole chain (VCEK, ASK, ARK)."""
    d = vectors / SNP_DIR
    quote = read_json(d / "tpm-quote-v1.json")
    return dumps({
        "quote": {
            "signature": list(bytes.fromhex(quote["signature"])),
            "message": list(bytes.fromhex(quote["message"])),
            "pcrs": [list(bytes.fromhex(p)) for p in quote["pcrs"]],
        },
        "report": list((d / "hcl-report.bin").read_bytes()),
        "vcek": (d / "vcek.pem").read_text(),
    })


# --- editing v1-style evidence ------------------------------------------------------------------


def v1_fields(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """(evidence object, HCL report bytes, quote message bytes) of v1 evidence."""
    obj = json.loads(data)
    return obj, b64url_decode(obj["hcl_report"]), bytes.fromhex(obj["tpm_quote"]["message"])


def with_hcl(data: bytes, report: bytes) -> bytes:
    obj = json.loads(data)
    obj["hcl_report"] = b64url(report)
    return dumps(obj)


def with_message(data: bytes, message: bytes) -> bytes:
    obj = json.loads(data)
    obj["tpm_quote"]["message"] = message.hex()
    return dumps(obj)


def var_data_offset(report: bytes, needle: bytes) -> int:
    """Offset in the HCL report of the first byte after ``needle`` inside the variable data."""
    at = report.index(needle, hcl.VAR_DATA_OFFSET)
    return at + len(needle)


# --- synthetic TPM structures -------------------------------------------------------------------


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def marshal_attest(
    *,
    extra: bytes,
    selections: list[tuple[int, list[int]]],
    pcr_digest: bytes,
    magic: int = tpm2.TPM_GENERATED_VALUE,
    attest_type: int = tpm2.TPM_ST_ATTEST_QUOTE,
) -> bytes:
    """TPMS_ATTEST (Part 2 §10.12.12) with TPMS_QUOTE_INFO."""
    out = struct.pack(">IH", magic, attest_type)
    out += tpm2b(b"\x00\x0b" + bytes(range(32)))  # qualifiedSigner: a SHA-256 TPM2B_NAME
    out += tpm2b(extra)
    out += struct.pack(">QIIB", 123456, 7, 0, 1)  # TPMS_CLOCK_INFO
    out += struct.pack(">Q", 0x2020031200120003)  # firmwareVersion
    out += struct.pack(">I", len(selections))
    for alg, indices in selections:
        bitmap = bytearray(3)
        for i in indices:
            bitmap[i // 8] |= 1 << (i % 8)
        out += struct.pack(">HB", alg, 3) + bytes(bitmap)
    return out + tpm2b(pcr_digest)


def marshal_rsa_signature(sig_alg: int, hash_alg: int, sig: bytes) -> bytes:
    return struct.pack(">HH", sig_alg, hash_alg) + tpm2b(sig)


def marshal_ecdsa_signature(hash_alg: int, r: int, s: int, size: int) -> bytes:
    return (struct.pack(">HH", tpm2.TPM_ALG_ECDSA, hash_alg)
            + tpm2b(r.to_bytes(size, "big")) + tpm2b(s.to_bytes(size, "big")))


def rsa_jwk(key: rsa.RSAPublicKey, kid: str) -> dict[str, Any]:
    nums = key.public_numbers()

    def enc(v: int) -> str:
        raw = v.to_bytes((v.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return {"kid": kid, "key_ops": ["sign"], "kty": "RSA", "e": enc(nums.e), "n": enc(nums.n)}


def var_data(ak: rsa.RSAPublicKey) -> bytes:
    return json.dumps({
        "keys": [rsa_jwk(ak, "HCLAkPub")],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True},
        "user-data": "00" * 64,
    }).encode()


def build_hcl(report_type: int, hw_report: bytes, var: bytes, *, hash_type: int = 1) -> bytes:
    """An HCL report in the Azure layout (see medclave.attestation.vtpm.hcl)."""
    data_size = hcl.REQUEST_SIZE + len(var)
    header = b"HCLA" + struct.pack("<4I", 1, hcl.HEADER_SIZE + hcl.HW_REPORT_AREA + data_size, 2, 0)
    header += bytes(12)
    body = hw_report.ljust(hcl.HW_REPORT_AREA, b"\0")
    request = struct.pack("<5I", data_size, 1, report_type, hash_type, len(var))
    return (header + body + request + var).ljust(2600, b"\0")
