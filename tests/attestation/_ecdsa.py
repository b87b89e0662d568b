"""ECDSA's second valid signature: (r, s) and (r, n - s) both verify (SEC 1 §4.1.4).

The group orders are written out from SEC 2 §2.4.2 and §2.5.1, not taken from the code under
test; a wrong order would make the twin fail to verify, so the tests check themselves.
"""

from __future__ import annotations

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P384_N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    16,
)

SNP_S_OFFSET = 0x2E8  # AMD spec 56860: signature R at 0x2A0, S at 0x2E8, 72 bytes each, little-endian
SNP_COMPONENT = 72


def snp_high_s(report: bytes) -> bytes:
    """The SEV-SNP report with its signature's s replaced by n - s (P-384)."""
    end = SNP_S_OFFSET + SNP_COMPONENT
    s = int.from_bytes(report[SNP_S_OFFSET:end], "little")
    assert 0 < s < P384_N
    return report[:SNP_S_OFFSET] + (P384_N - s).to_bytes(SNP_COMPONENT, "little") + report[end:]


def raw_high_s(signature: bytes, n: int) -> bytes:
    """A big-endian r || s signature (JWS, SPDM, TDX) with s replaced by n - s."""
    half = len(signature) // 2
    s = int.from_bytes(signature[half:], "big")
    assert 0 < s < n
    return signature[:half] + (n - s).to_bytes(half, "big")
