"""Intel TDX: DCAP quotes v4 and v5 (the registry's ``tdx`` platform).

``abi`` turns bytes into structures, ``verify`` is the TDX profile of the DCAP verifier shared
with SGX (``attestation/dcap/``: the PCK chain, PCS collateral and the dcap-qvl bundle, TCB level
matching) and ``rules.appraise`` applies TDX-specific appraisal rules. The vTPM flow (Azure TDX CVMs
wrap a TD quote) reaches this module through the registry or :func:`verify_quote`.
"""

from __future__ import annotations

from medclave.attestation.core import (
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    require_size,
)
from medclave.attestation.dcap.verify import verification_of
from medclave.attestation.tdx import abi
from medclave.attestation.tdx.verify import (
    INTEL_SGX_ROOT_CA_SHA256,
    TRUSTED_ROOTS,
    QuoteVerification,
    claims_of,
    clear_caches,
    leaf_tcb,
    pck_chain,
    verify_quote,
)

PLATFORM = "tdx"

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "PLATFORM",
    "TRUSTED_ROOTS",
    "QuoteVerification",
    "clear_caches",
    "detect",
    "parse",
    "signed_bytes",
    "verify",
    "verify_quote",
]


def detect(data: bytes) -> str | None:
    """``"tdx"`` when ``data`` starts like a v4/v5 ECDSA-P256 TDX quote (tee_type 0x81)."""
    return PLATFORM if abi.looks_like_quote(data) else None


def parse(data: bytes) -> Claims:
    """Claims of a quote without any cryptographic check (for display and debugging only)."""
    require_size(data, maximum=abi.MAX_QUOTE_BYTES)
    quote = abi.parse_quote(data)
    return claims_of(quote, leaf_tcb(pck_chain(quote)[0]))


def signed_bytes(data: bytes) -> bytes:
    """The quote header and TD report body, as the attestation key signed them."""
    require_size(data, maximum=abi.MAX_QUOTE_BYTES)
    return abi.parse_quote(data).signed


def verify(data: bytes, options: VerifyOptions) -> Verification:
    """Verify a TDX quote and its collateral at ``options.now`` (see ``verify`` for the steps)."""
    require_size(data, maximum=abi.MAX_QUOTE_BYTES)
    log = CheckLog()
    result = verify_quote(data, options, log=log)
    return verification_of(PLATFORM, data, result, claims_of(result.quote, result.pck), log)
