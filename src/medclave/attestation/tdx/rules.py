"""TDX-specific appraisal rules over verified claims: every violation at once, never the first.

The checks go-tdx-guest's ``validate`` package and Intel's appraisal guidance make on a quote
whose signatures already verified: measurement allow-lists (MRTD, RTMRs, MRSEAM, ...), exact
report_data, no debug (TDATTRIBUTES.DEBUG lets the host read and write TD memory), TD attributes
and XFAM, the QE vendor (Intel's QE), minimum TEE TCB SVN per component (compared as Intel's
TCB level matching does), minimum QE ISVSVN and PCESVN, accepted TCB statuses, and whether the
PCK revocation was checked. The generic policy module may call :func:`appraise` with the claims
of ``tdx.verify``; a claim that is missing violates every rule that reads it (fails closed).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medclave.attestation.core import TCB_STATUS_ORDER, Violation

# Intel's Quoting Enclave vendor ID (TDX DCAP Quoting Library API, A.3.1).
INTEL_QE_VENDOR_ID = "939a7233f79c4ca9940a0db3957f0607"
# Statuses before OutOfDate in core's order: what a default policy accepts.
DEFAULT_TCB_STATUSES = frozenset(TCB_STATUS_ORDER[: TCB_STATUS_ORDER.index("OutOfDate")])

_MEASUREMENTS = (
    "mr_td", "mr_seam", "mr_signer_seam", "mr_config_id", "mr_owner", "mr_owner_config",
    "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_servicetd",
)


@dataclass(frozen=True, kw_only=True)
class TdxRules:
    """What a relying party accepts. ``None`` means "no constraint"; defaults are the safe side."""

    measurements: Mapping[str, frozenset[str]] | None = None  # {"mr_td": {...}, "rtmr1": {...}}
    report_data: str | None = None  # exact, hex
    td_attributes: frozenset[str] | None = None
    xfam: frozenset[str] | None = None
    qe_vendor_ids: frozenset[str] | None = frozenset({INTEL_QE_VENDOR_ID})
    min_tee_tcb_svn: str | None = None  # 16 bytes hex, minimum per component
    min_qe_isvsvn: int | None = None
    min_pce_svn: int | None = None
    allow_debug: bool = False
    tcb_statuses: frozenset[str] | None = DEFAULT_TCB_STATUSES
    allow_unknown_tcb: bool = False
    require_revocation_check: bool = False


def _hex(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _allow(
    claims: Mapping[str, Any], claim: str, allowed: frozenset[str] | None, code: str,
    out: list[Violation],
) -> None:
    if allowed is None:
        return
    actual = claims.get(claim)
    if not isinstance(actual, str) or actual.lower() not in {a.lower() for a in allowed}:
        out.append(Violation(code, claim, f"{actual!r} is not an accepted value"))


def _minimum(
    claims: Mapping[str, Any], claim: str, minimum: int | None, out: list[Violation]
) -> None:
    if minimum is None:
        return
    actual = claims.get(claim)
    if not isinstance(actual, int) or isinstance(actual, bool) or actual < minimum:
        out.append(Violation("policy.tcb_too_low", claim, f"{actual!r} below minimum {minimum}"))


def _tee_tcb_svn(claims: Mapping[str, Any], minimum: str, out: list[Violation]) -> None:
    have, need = _hex(claims.get("tee_tcb_svn")), _hex(minimum)
    if need is None or len(need) != 16:
        out.append(Violation("policy.tcb_too_low", "tee_tcb_svn",
                             "the rule's minimum is not 16 bytes of hex"))
        return
    if have is None or len(have) != 16:
        out.append(Violation("policy.tcb_too_low", "tee_tcb_svn", "no TEE TCB SVN in the claims"))
        return
    low = [i for i in range(16) if have[i] < need[i]]
    if low:
        out.append(Violation("policy.tcb_too_low", "tee_tcb_svn",
                             f"component(s) {low} of {have.hex()} below {need.hex()}"))


def appraise(
    claims: Mapping[str, Any], rules: TdxRules, *, tcb_status: str = "unknown"
) -> list[Violation]:
    """Every rule of ``rules`` broken by ``claims``; an empty list means accepted."""
    out: list[Violation] = []
    if not rules.allow_debug and claims.get("debug") is not False:
        out.append(Violation("policy.debug_forbidden", "debug",
                             "TDATTRIBUTES.DEBUG is set (the host can read the TD's memory)"))
    for claim, allowed in sorted((rules.measurements or {}).items()):
        if claim not in _MEASUREMENTS:
            out.append(Violation("policy.refused", claim, f"{claim!r} is not a TDX measurement"))
            continue
        _allow(claims, claim, allowed, "attestation.measurement_mismatch", out)
    if rules.report_data is not None:
        have, want = _hex(claims.get("report_data")), _hex(rules.report_data)
        if have is None or want is None or not hmac.compare_digest(have, want):
            out.append(Violation("attestation.binding_mismatch", "report_data",
                                 "report_data differs from the expected value"))
    _allow(claims, "td_attributes", rules.td_attributes, "policy.refused", out)
    _allow(claims, "xfam", rules.xfam, "policy.refused", out)
    _allow(claims, "qe_vendor_id", rules.qe_vendor_ids, "policy.refused", out)
    if rules.min_tee_tcb_svn is not None:
        _tee_tcb_svn(claims, rules.min_tee_tcb_svn, out)
    _minimum(claims, "qe_isvsvn", rules.min_qe_isvsvn, out)
    _minimum(claims, "pce_svn", rules.min_pce_svn, out)
    if tcb_status == "unknown":
        if not rules.allow_unknown_tcb:
            out.append(Violation("policy.tcb_too_low", "tcb_status",
                                 "TCB status unknown: no collateral was verified"))
    elif rules.tcb_statuses is not None and tcb_status not in rules.tcb_statuses:
        out.append(Violation("policy.tcb_too_low", "tcb_status",
                             f"TCB status {tcb_status} not in {sorted(rules.tcb_statuses)}"))
    if rules.require_revocation_check and claims.get("revocation_checked") is not True:
        out.append(Violation("policy.refused", "revocation_checked",
                             "no PCK CRL was supplied, so revocation was not checked"))
    return out
