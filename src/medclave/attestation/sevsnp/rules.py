"""SNP-specific appraisal rules over verified claims: every violation at once, never the first.

These are the checks AMD's guidance and go-sev-guest's ``validate`` package make on a report
whose signature already verified: minimum TCB per component, no debug, SMT, no migration
agent, VMPL, measurement and HOST_DATA allow-lists, the signing key kind, the product.
The generic policy module calls :func:`appraise` with the claims of :func:`sevsnp.parse`
or ``sevsnp.verify``; claim names in violations are the same dotted paths it uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from medclave.attestation.core import Violation

_TCB_COMPONENTS = ("bl", "tee", "snp", "ucode", "fmc")


@dataclass(frozen=True, kw_only=True)
class SnpRules:
    """What a relying party accepts. ``None`` means "no constraint"; the two booleans default
    to the safe side (debug and a migration agent let the host read guest memory)."""

    min_tcb: Mapping[str, int] | None = None  # {"bl": 3, "snp": 8, "ucode": 115} on REPORTED_TCB
    min_tcb_by_product: Mapping[str, Mapping[str, int]] | None = None  # {"Genoa": {...}}
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool | None = None  # False: refuse when SMT is enabled on the platform
    vmpls: frozenset[int] | None = None
    measurements: frozenset[str] | None = None  # hex, any case
    host_data: frozenset[str] | None = None
    signing_keys: frozenset[str] | None = None  # {"vcek"}, {"vcek", "vlek"}
    products: frozenset[str] | None = None  # {"Milan", "Genoa", "Turin"}
    min_guest_svn: int | None = None
    id_key_digests: frozenset[str] | None = None
    require_single_socket: bool = False


def _lower(values: frozenset[str]) -> frozenset[str]:
    return frozenset(v.lower() for v in values)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tcb(
    claims: Mapping[str, Any], minimums: Mapping[str, int], out: list[Violation]
) -> None:
    parts = claims.get("reported_tcb_parts")
    for component, minimum in sorted(minimums.items()):
        path = f"reported_tcb_parts.{component}"
        if component not in _TCB_COMPONENTS:
            out.append(Violation("policy.tcb_too_low", path,
                                 f"unknown TCB component {component!r}"))
            continue
        actual = parts.get(component) if isinstance(parts, Mapping) else None
        if not _is_int(actual):
            out.append(Violation("policy.tcb_too_low", path,
                                 f"no {component} SPL in the report, minimum {minimum}"))
        elif actual < minimum:
            out.append(Violation("policy.tcb_too_low", path, f"{actual} below minimum {minimum}"))


def _allow_list(
    claims: Mapping[str, Any], claim: str, allowed: frozenset[str] | None, code: str,
    out: list[Violation],
) -> None:
    if allowed is None:
        return
    actual = claims.get(claim)
    if not isinstance(actual, str) or actual.lower() not in _lower(allowed):
        out.append(Violation(code, claim, f"{actual!r} is not an accepted value"))


def appraise(claims: Mapping[str, Any], rules: SnpRules) -> list[Violation]:
    """Every rule of ``rules`` broken by ``claims``; an empty list means accepted.

    A claim that is missing counts as a violation of any rule that reads it (fails closed).
    """
    out: list[Violation] = []
    bits = claims.get("policy_bits")
    bits = bits if isinstance(bits, Mapping) else {}
    platform = claims.get("platform_info_bits")
    platform = platform if isinstance(platform, Mapping) else {}

    if rules.min_tcb:
        _check_tcb(claims, rules.min_tcb, out)
    if rules.min_tcb_by_product:
        product = claims.get("product")
        per_product = rules.min_tcb_by_product.get(product) if isinstance(product, str) else None
        if per_product is None:
            out.append(Violation("policy.tcb_too_low", "product",
                                 f"no TCB minimum is defined for product {product!r}"))
        else:
            _check_tcb(claims, per_product, out)

    if not rules.allow_debug and claims.get("debug") is not False:
        out.append(Violation("policy.debug_forbidden", "policy_bits.debug",
                             "the guest policy allows debugging (the host can read its memory)"))
    if not rules.allow_migration_agent and bits.get("migrate_ma") is not False:
        out.append(Violation("policy.migration_agent_forbidden", "policy_bits.migrate_ma",
                             "the guest policy allows a migration agent"))
    if rules.allow_smt is False:
        smt_on = platform.get("smt_enabled")
        if smt_on is not False:
            out.append(Violation("policy.smt_forbidden", "platform_info_bits.smt_enabled",
                                 "SMT is enabled on the platform" if smt_on else
                                 "the platform's SMT state is unknown"))
    if rules.require_single_socket and bits.get("single_socket") is not True:
        out.append(Violation("policy.refused", "policy_bits.single_socket",
                             "the guest policy does not require a single socket"))

    if rules.vmpls is not None:
        vmpl = claims.get("vmpl")
        if not _is_int(vmpl) or vmpl not in rules.vmpls:
            out.append(Violation("policy.vmpl_not_allowed", "vmpl",
                                 f"VMPL {vmpl!r} not in {sorted(rules.vmpls)}"))
    if rules.min_guest_svn is not None:
        svn = claims.get("guest_svn")
        if not _is_int(svn) or svn < rules.min_guest_svn:
            out.append(Violation("policy.tcb_too_low", "guest_svn",
                                 f"guest SVN {svn!r} below minimum {rules.min_guest_svn}"))

    _allow_list(claims, "measurement", rules.measurements, "attestation.measurement_mismatch", out)
    _allow_list(claims, "host_data", rules.host_data, "policy.host_data_mismatch", out)
    _allow_list(claims, "id_key_digest", rules.id_key_digests,
                "attestation.measurement_mismatch", out)
    if rules.signing_keys is not None and claims.get("signing_key") not in rules.signing_keys:
        out.append(Violation("policy.signing_key_not_allowed", "signing_key",
                             f"signed by {claims.get('signing_key')!r}, accepted: "
                             f"{sorted(rules.signing_keys)}"))
    if rules.products is not None and claims.get("product") not in rules.products:
        out.append(Violation("policy.platform_not_allowed", "product",
                             f"product {claims.get('product')!r} not in {sorted(rules.products)}"))
    return out
