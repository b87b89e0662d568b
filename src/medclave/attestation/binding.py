"""The report_data binding: one hardware signature vouches for every key the client will trust.

``report_data = SHA-512("medclave-attest-v1" || nonce || SHA-256(canonical JSON of runtime))``
(docs/architecture.md, "Evidence bundle"). 64 bytes: the size of SNP and TDX report_data.

GPUs attested beside the CPU (an H100 in a confidential VM) answer an SPDM GET_MEASUREMENTS whose
32-byte requester nonce (DSP0274 1.1 §10.11.1, Table 40) is derived from that same report_data::

    gpu_nonce = SHA-256("medclave-gpu-v1" || report_data)

so the GPU evidence is as fresh as the CPU report and tied to the same runtime: it cannot be
replayed from another boot, another request or another machine. The CPU and its GPUs verify as
one unit or not at all (``verifier.verify_bundle``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from medclave.crypto.canonical import canonical_sha256
from medclave.errors import AttestationError

BINDING_LABEL = b"medclave-attest-v1"
GPU_NONCE_LABEL = b"medclave-gpu-v1"
REPORT_DATA_LENGTH = 64


def report_data_for(nonce: bytes, runtime: Mapping[str, Any]) -> bytes:
    return hashlib.sha512(BINDING_LABEL + nonce + canonical_sha256(dict(runtime))).digest()


def verify_binding(report_data: bytes, nonce: bytes, runtime: Mapping[str, Any]) -> None:
    """Raise ``attestation.binding_mismatch`` unless ``report_data`` binds this nonce and runtime."""
    if not hmac.compare_digest(report_data, report_data_for(nonce, runtime)):
        raise AttestationError(
            "attestation.binding_mismatch",
            "report_data is not SHA-512(label || nonce || SHA-256(runtime)) for this nonce",
        )


def gpu_nonce_for(report_data: bytes) -> bytes:
    """The SPDM nonce for every GPU beside a CPU report: SHA-256("medclave-gpu-v1" || report_data)."""
    if len(report_data) != REPORT_DATA_LENGTH:
        raise AttestationError("attestation.binding_mismatch",
                               f"report_data is {len(report_data)} bytes, not {REPORT_DATA_LENGTH}")
    return hashlib.sha256(GPU_NONCE_LABEL + report_data).digest()
