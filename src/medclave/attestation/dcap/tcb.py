"""TCB level matching for DCAP quotes (SGX and TDX) against verified TCB Info v3 and QE identity
collateral.

Follows Intel's Quote Verification Library (SGX-TDX-DCAP-QuoteVerificationLibrary,
``TcbLevelCheck.cpp`` and ``TdxModuleCheck.cpp``; the step numbers 4.1.2.4.17.x are those of
Intel's "ECDSA Quote Library API" verification algorithm):

* 4.1.2.4.17.1-2: walk ``tcbLevels`` in document order (the PCS sorts them highest first) and
  take the first level whose 16 SGX components and PCESVN are each <= the PCK certificate's
  (for an SGX quote, that level's status is the platform's: :func:`match_sgx`);
* 4.1.2.4.17.3: for TDX, from that level on take the first whose 16 TDX components are <= the
  quote's ``tee_tcb_svn``, skipping indexes 0 and 1 when ``tee_tcb_svn[1]`` (the TDX module
  major version) is non-zero, because the module is then appraised by its own identity;
* 4.1.2.4.17.4: the TDX module identity ``TDX_%02X`` of ``tee_tcb_svn[1]`` (or ``tdxModule``
  when it is zero) must match ``mr_signer_seam`` and the masked SEAM attributes, and its first
  level with ``isvsvn <= tee_tcb_svn[0]`` gives the module status;
* the QE identity must match the QE report (MRSIGNER, ISVPRODID, masked MISCSELECT and
  ATTRIBUTES) and its first level with ``isvsvn <=`` the QE's ISVSVN gives the QE status;
* module and QE statuses converge into the platform status as ``convergeTcbStatusWith*``.

No level at any of these steps is reported as ``NoMatch`` (Intel: TCB_NOT_SUPPORTED), which
the default policy refuses; a module or QE identity that does not match is refused outright.
"""

from __future__ import annotations

from dataclasses import dataclass

from medclave.attestation.dcap.pck import PckTcb
from medclave.attestation.dcap.pcs import (
    EnclaveIdentity,
    IsvLevel,
    TcbInfo,
    TcbLevel,
    TdxModule,
    invalid,
)
from medclave.attestation.dcap.report import EnclaveReport
from medclave.attestation.tdx.abi import TdReport
from medclave.errors import AttestationError

NO_MATCH = "NoMatch"


@dataclass(frozen=True)
class TcbMatch:
    status: str
    level: TcbLevel | None
    module_id: str
    module_status: str
    advisory_ids: tuple[str, ...]
    detail: str


def converge(level_status: str, other: str) -> str:
    """Fold a module or QE status into the platform status (convergeTcbStatusWith*)."""
    if NO_MATCH in (level_status, other):
        return NO_MATCH
    if other == "Revoked":
        return "Revoked"
    if other == "OutOfDate":
        if level_status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if level_status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return level_status


def _isv_level(levels: tuple[IsvLevel, ...], isv_svn: int) -> IsvLevel | None:
    return next((level for level in levels if isv_svn >= level.isv_svn), None)


def _sgx_ok(level: TcbLevel, pck: PckTcb) -> bool:
    pairs = zip(pck.sgx_tcb_components, level.sgx_components, strict=True)
    return all(have >= need for have, need in pairs) and pck.pce_svn >= level.pce_svn


def _platform_level(
    info: TcbInfo, pck: PckTcb, tee_tcb_svn: bytes
) -> tuple[TcbLevel | None, TcbLevel | None]:
    start = 2 if tee_tcb_svn[1] > 0 else 0
    sgx_level: TcbLevel | None = None
    for level in info.levels:
        if not _sgx_ok(level, pck):
            continue
        if sgx_level is None:
            sgx_level = level
        if all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16)):
            return sgx_level, level
    return sgx_level, None


def _check_module(module: TdxModule, body: TdReport) -> None:
    masked = bytes(a & m for a, m in zip(body.seam_attributes, module.attributes_mask, strict=True))
    if body.mr_signer_seam != module.mr_signer or masked != module.attributes:
        name = module.id or "tdxModule"
        raise AttestationError(
            "attestation.measurement_mismatch",
            f"TDX module: mr_signer_seam / SEAM attributes differ from the collateral's {name}",
        )


def match_sgx(info: TcbInfo, pck: PckTcb) -> TcbMatch:
    """The platform status of an SGX quote: its first level by SGX components and PCESVN."""
    level = next((lv for lv in info.levels if _sgx_ok(lv, pck)), None)
    if level is None:
        return TcbMatch(NO_MATCH, None, "", NO_MATCH, (),
                        "no TCB level matches the SGX components / PCESVN")
    return TcbMatch(level.status, level, "", "", level.advisory_ids,
                    f"level {level.tcb_date} {level.status}")


def match_tdx(info: TcbInfo, pck: PckTcb, body: TdReport) -> TcbMatch:
    """The platform and TDX module status of ``body`` on the platform certified by ``pck``."""
    svn = body.tee_tcb_svn
    sgx_level, level = _platform_level(info, pck, svn)
    if sgx_level is None or level is None:
        which = "SGX components / PCESVN" if sgx_level is None else "TDX components"
        return TcbMatch(NO_MATCH, None, "", NO_MATCH, (), f"no TCB level matches the {which}")
    advisories = list(level.advisory_ids)
    if svn[1] == 0:
        if info.tdx_module is None:
            raise invalid("tcbInfo has no tdxModule to appraise the TDX module against")
        _check_module(info.tdx_module, body)
        module_id, module_status = "tdxModule", "UpToDate"
    else:
        module_id = f"TDX_{svn[1]:02X}"
        module = next((m for m in info.module_identities if m.id.upper() == module_id), None)
        if module is None:
            return TcbMatch(
                NO_MATCH, level, module_id, NO_MATCH, tuple(advisories),
                f"tcbInfo has no identity {module_id} for this TDX module",
            )
        _check_module(module, body)
        module_level = _isv_level(module.levels, svn[0])
        module_status = NO_MATCH if module_level is None else module_level.status
        if module_level is not None:
            advisories.extend(module_level.advisory_ids)
    status = converge(level.status, module_status)
    return TcbMatch(
        status, level, module_id, module_status, tuple(dict.fromkeys(advisories)),
        f"level {level.tcb_date} {level.status}; module {module_id} {module_status}",
    )


def match_qe(identity: EnclaveIdentity, qe: EnclaveReport) -> IsvLevel | None:
    """The QE identity level of ``qe``, None when its ISVSVN is below every level."""
    masked_attributes = bytes(
        a & m for a, m in zip(qe.attributes, identity.attributes_mask, strict=True)
    )
    mismatches = [
        name
        for name, ok in (
            ("MRSIGNER", qe.mr_signer == identity.mr_signer),
            ("ISVPRODID", qe.isv_prod_id == identity.isv_prod_id),
            ("MISCSELECT", qe.miscselect & identity.miscselect_mask == identity.miscselect),
            ("ATTRIBUTES", masked_attributes == identity.attributes),
        )
        if not ok
    ]
    if mismatches:
        raise AttestationError(
            "attestation.qe_identity_mismatch",
            f"the QE report differs from the {identity.id} identity in {', '.join(mismatches)}",
        )
    return _isv_level(identity.levels, qe.isv_svn)
