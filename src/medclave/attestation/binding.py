"""The report_data binding: one hardware signature vouches for every key the client will trust.

``report_data = SHA-512("medclave-attest-v1" || nonce || SHA-256(canonical JSON of runtime))``
(ARCHITECTURE.md, "Evidence bundle"). 64 bytes: the size of SNP and TDX report_data.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from medclave.crypto.canonical import canonical_sha256
from medclave.errors import AttestationError

BINDING_LABEL = b"medclave-attest-v1"


def report_data_for(nonce: bytes, runtime: Mapping[str, Any]) -> bytes:
    return hashlib.sha512(BINDING_LABEL + nonce + canonical_sha256(dict(runtime))).digest()


def verify_binding(report_data: bytes, nonce: bytes, runtime: Mapping[str, Any]) -> None:
    """Raise ``attestation.binding_mismatch`` unless ``report_data`` binds this nonce and runtime."""
    if not hmac.compare_digest(report_data, report_data_for(nonce, runtime)):
        raise AttestationError(
            "attestation.binding_mismatch",
            "report_data is not SHA-512(label || nonce || SHA-256(runtime)) for this nonce",
        )
