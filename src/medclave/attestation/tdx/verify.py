"""TDX quote verification: the TDX profile of the shared DCAP verifier (``dcap.verify``, whose
docstring lists the steps), and the claims of a TD quote.

TDX specifics: the quote is v4 or v5 (``abi``), the collateral is TDX TCB Info ("TDX") and the
TD QE identity ("TD_QE"), and TCB matching adds the TDX components and the TDX module identity
(``dcap.tcb.match_tdx``).
"""

from __future__ import annotations

from typing import Any

from medclave.attestation.core import CheckLog, VerifyOptions
from medclave.attestation.dcap import tcb
from medclave.attestation.dcap import verify as dcap_verify
from medclave.attestation.dcap.pck import PckTcb
from medclave.attestation.dcap.pcs import TcbInfo
from medclave.attestation.dcap.verify import (
    INTEL_SGX_ROOT_CA_SHA256,
    TRUSTED_ROOTS,
    Profile,
    QuoteVerification,
    clear_caches,
    leaf_tcb,
    pck_chain,
)
from medclave.attestation.tdx import abi

# Intel's TD Quoting Enclave identity ("TD_QE" in Intel PCS, the same in every QE identity
# document): pinned for quotes verified without QE identity collateral.
TD_QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
TD_QE_ISVPRODID = 2

__all__ = ["INTEL_SGX_ROOT_CA_SHA256", "TDX", "TRUSTED_ROOTS", "QuoteVerification", "claims_of",
           "clear_caches", "leaf_tcb", "pck_chain", "verify_quote"]


def _describe(quote: abi.Quote) -> str:
    return (f"v{quote.header.version}, body type {quote.body.body_type}, "
            f"{quote.trailing} trailing byte(s) ignored")


def _match(info: TcbInfo, pck: PckTcb, quote: abi.Quote) -> tcb.TcbMatch:
    return tcb.match_tdx(info, pck, quote.body)


TDX = Profile(name="TDX", parse=abi.parse_quote, describe=_describe, tcb_info_id="TDX",
              qe_identity_id="TD_QE", qe_mrsigner=TD_QE_MRSIGNER, qe_isvprodid=TD_QE_ISVPRODID,
              match=_match)


def verify_quote(
    data: bytes, options: VerifyOptions, *, log: CheckLog | None = None
) -> QuoteVerification:
    """Verify a raw TDX quote (v4 or v5) and its collateral; raise on the first failed step.

    ``options.endorsements.collateral`` may hold PCS tcbInfo / QE identity responses, PCK and
    root CRLs (DER or PEM), PEM issuer chains and dcap-qvl collateral bundles, in any order;
    ``options.endorsements.certificates`` may add the TCB signing chain.
    """
    return dcap_verify.verify_quote(data, options, profile=TDX, log=log)


def claims_of(quote: abi.Quote, pck: PckTcb | None) -> dict[str, Any]:
    """The claims of a quote (lower-case hex for bytes); PCK values when the leaf was read."""
    body = quote.body
    claims: dict[str, Any] = {
        "version": quote.header.version,
        "body_type": body.body_type,
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mr_signer_seam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes.hex(),
        "xfam": body.xfam.hex(),
        "mr_td": body.mr_td.hex(),
        "mr_config_id": body.mr_config_id.hex(),
        "mr_owner": body.mr_owner.hex(),
        "mr_owner_config": body.mr_owner_config.hex(),
        **{f"rtmr{i}": rtmr.hex() for i, rtmr in enumerate(body.rtmrs)},
        "report_data": body.report_data.hex(),
        # TDATTRIBUTES bit 0 (TUD.DEBUG): the host VMM can read and write the TD's state.
        "debug": bool(body.td_attributes[0] & 0x01),
        "qe_vendor_id": quote.header.qe_vendor_id.hex(),
        "qe_isvsvn": quote.qe_report.isv_svn,
    }
    if body.tee_tcb_svn2 is not None and body.mr_servicetd is not None:
        claims["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
        claims["mr_servicetd"] = body.mr_servicetd.hex()
    if pck is not None:
        claims["fmspc"] = pck.fmspc.hex()
        claims["pce_id"] = pck.pce_id.hex()
        claims["pce_svn"] = pck.pce_svn
    return claims

