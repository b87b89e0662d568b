"""Intel SGX DCAP (the registry's ``sgx`` platform): ECDSA quotes v3 and v4 of an SGX enclave.

``abi`` turns bytes into structures; verification is the SGX profile of the DCAP verifier
shared with TDX (``attestation/dcap/``, whose ``verify`` docstring lists the steps): the PCK
chain to the pinned Intel SGX Root CA, the QE report signature and attestation-key binding, the
quote signature, and the collateral (TCB Info v3 with id "SGX", the QE identity "QE", PCK and
root CRLs; as Intel PCS responses or the dcap-qvl bundle) matched into one TCB status with its
advisory ids. Intel re-issued the TCB Signing certificate in 2025 (same key and serial): both
copies chain to the root, and the one valid at the verification time is used.

Evidence is the raw quote or its hex text. ``report_data`` (64 bytes of the enclave's REPORT)
carries the Medclave binding in an evidence bundle.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from medclave.attestation.core import (
    CheckLog,
    Claims,
    Verification,
    VerifyOptions,
    require_size,
)
from medclave.attestation.dcap import tcb
from medclave.attestation.dcap import verify as dcap
from medclave.attestation.dcap.pck import PckTcb
from medclave.attestation.dcap.pcs import TcbInfo
from medclave.attestation.sgx import abi
from medclave.errors import AttestationError

PLATFORM = "sgx"
# Intel's SGX Quoting Enclave ("QE" in Intel PCS, the same in every QE identity document):
# pinned for quotes verified without QE identity collateral.
QE_MRSIGNER = bytes.fromhex("8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff")
QE_ISVPRODID = 1
_HEX = re.compile(rb"[0-9a-fA-F]+\Z")

__all__ = ["PLATFORM", "SGX", "clear_caches", "detect", "parse", "signed_bytes", "verify"]


def _describe(quote: abi.Quote) -> str:
    return f"v{quote.header.version}, {quote.trailing} trailing byte(s) ignored"


def _match(info: TcbInfo, pck: PckTcb, _quote: abi.Quote) -> tcb.TcbMatch:
    return tcb.match_sgx(info, pck)


SGX = dcap.Profile(name="SGX", parse=abi.parse_quote, describe=_describe, tcb_info_id="SGX",
                   qe_identity_id="QE", qe_mrsigner=QE_MRSIGNER, qe_isvprodid=QE_ISVPRODID,
                   match=_match)


def clear_caches() -> None:
    dcap.clear_caches()


def _raw(data: bytes) -> bytes:
    """The quote, from its bytes or its hex text (as Automata and many tools store it)."""
    require_size(data, maximum=2 * abi.MAX_QUOTE_BYTES + 2)
    if abi.looks_like_quote(data):
        return data
    text = data.strip()
    if len(text) % 2 == 0 and _HEX.match(text):
        try:
            raw = binascii.unhexlify(text)
        except binascii.Error:
            raw = b""
        if abi.looks_like_quote(raw):
            return raw
    raise AttestationError("attestation.malformed", "not an SGX quote (bytes or hex)")


def detect(data: bytes) -> str | None:
    try:
        _raw(data)
    except AttestationError:
        return None
    return PLATFORM


def claims_of(quote: abi.Quote, pck: PckTcb | None) -> dict[str, Any]:
    body = quote.body
    claims: dict[str, Any] = {
        "version": quote.header.version,
        "mrenclave": body.mr_enclave.hex(),
        "mrsigner": body.mr_signer.hex(),
        "isvprodid": body.isv_prod_id,
        "isvsvn": body.isv_svn,
        "attributes": body.attributes.hex(),
        "xfrm": body.attributes[8:16].hex(),
        "miscselect": f"{body.miscselect:08x}",
        "cpusvn": body.cpu_svn.hex(),
        "config_id": body.config_id.hex(),
        "config_svn": body.config_svn,
        "isv_ext_prod_id": body.isv_ext_prod_id.hex(),
        "isv_family_id": body.isv_family_id.hex(),
        "report_data": body.report_data.hex(),
        # ATTRIBUTES.DEBUG: the enclave's memory can be read and written by a debugger.
        "debug": body.debug,
        "qe_vendor_id": quote.header.qe_vendor_id.hex(),
        "qe_isvsvn": quote.qe_report.isv_svn,
    }
    if pck is not None:
        claims.update(fmspc=pck.fmspc.hex(), pce_id=pck.pce_id.hex(), pce_svn=pck.pce_svn,
                      pck_tcb_components=list(pck.sgx_tcb_components))
    return claims


def parse(data: bytes) -> Claims:
    quote = abi.parse_quote(_raw(data))
    return claims_of(quote, dcap.leaf_tcb(dcap.pck_chain(quote)[0]))


def signed_bytes(data: bytes) -> bytes:
    """The quote header and the enclave report body, as the attestation key signed them."""
    return abi.parse_quote(_raw(data)).signed


def verify(data: bytes, options: VerifyOptions) -> Verification:
    log = CheckLog()
    try:
        raw = _raw(data)
    except AttestationError as exc:
        raise log.fail("0. parse quote", exc.code, exc.detail) from exc
    result = dcap.verify_quote(raw, options, profile=SGX, log=log)
    return dcap.verification_of(PLATFORM, data, result, claims_of(result.quote, result.pck), log)
