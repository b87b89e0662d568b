"""NVIDIA-specific appraisal rules over verified claims: versions and reference-manifest coverage.

These run after :func:`medclave.attestation.nvidia.verify` succeeded. Like the general appraisal
(``attestation.policy``) they report every broken rule at once as
:class:`~medclave.attestation.core.Violation` values; :func:`enforce` raises them together.

Versions compare numerically: driver ``550.90.07`` as decimal groups, VBIOS ``96.00.9f.00.01``
as hexadecimal groups (the format of the opaque VBIOS field, see ``abi.format_vbios_version``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from medclave.attestation.core import Violation
from medclave.errors import PolicyError

_DRIVER = re.compile(r"\A\d{1,4}(\.\d{1,4}){1,3}\Z")
_VBIOS = re.compile(r"\A[0-9a-fA-F]{2}(\.[0-9a-fA-F]{2}){4}\Z")


def driver_version_key(text: str) -> tuple[int, ...] | None:
    return tuple(int(p) for p in text.split(".")) if _DRIVER.match(text) else None


def vbios_version_key(text: str) -> tuple[int, ...] | None:
    return tuple(int(p, 16) for p in text.split(".")) if _VBIOS.match(text) else None


class NvidiaPolicy(BaseModel):
    """What a relying party accepts from an H100. Empty allow-lists accept any version.

    ``require_rim`` (default on, as nvtrust's verifier) demands that both the driver and the VBIOS
    reference manifests were verified and matched; without them only the chain and signature
    were checked, which says the GPU is genuine but not what firmware it runs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_driver_versions: tuple[str, ...] = ()
    allowed_vbios_versions: tuple[str, ...] = ()
    min_driver_version: str | None = None
    min_vbios_version: str | None = None
    require_rim: bool = True
    require_revocation_check: bool = False

    @field_validator("allowed_driver_versions", "min_driver_version")
    @classmethod
    def _driver_format(cls, value: Any) -> Any:
        for v in (value,) if isinstance(value, str) else value or ():
            if driver_version_key(v) is None:
                raise ValueError(f"{v!r} is not a driver version like 550.90.07")
        return value

    @field_validator("allowed_vbios_versions", "min_vbios_version")
    @classmethod
    def _vbios_format(cls, value: Any) -> Any:
        for v in (value,) if isinstance(value, str) else value or ():
            if vbios_version_key(v) is None:
                raise ValueError(f"{v!r} is not a VBIOS version like 96.00.9f.00.01")
        return value


def _version_rules(
    claims: Mapping[str, Any],
    claim: str,
    allowed: tuple[str, ...],
    minimum: str | None,
    key: Any,
) -> list[Violation]:
    out: list[Violation] = []
    actual = claims.get(claim)
    actual_key = key(actual) if isinstance(actual, str) else None
    if (allowed or minimum) and actual_key is None:
        return [Violation("policy.refused", claim, f"{actual!r} is not a readable version")]
    if allowed and actual_key not in {key(a) for a in allowed}:
        out.append(Violation("policy.refused", claim,
                             f"{actual} is not among the allowed {list(allowed)}"))
    if minimum is not None and actual_key is not None and actual_key < key(minimum):
        out.append(Violation("policy.tcb_too_low", claim,
                             f"{actual} is below the minimum {minimum}"))
    return out


def appraise(claims: Mapping[str, Any], policy: NvidiaPolicy) -> tuple[Violation, ...]:
    """Every rule of ``policy`` against verified NVIDIA ``claims``; never raises for a refusal."""
    v: list[Violation] = []
    v += _version_rules(claims, "driver_version", policy.allowed_driver_versions,
                        policy.min_driver_version, driver_version_key)
    v += _version_rules(claims, "vbios_version", policy.allowed_vbios_versions,
                        policy.min_vbios_version, vbios_version_key)
    if policy.require_rim:
        kinds = claims.get("rim_kinds") or ()
        missing = [k for k in ("driver", "vbios") if k not in kinds]
        if missing:
            v.append(Violation(
                "policy.refused", "rim_kinds",
                f"no verified {' and '.join(missing)} RIM; the policy requires both",
            ))
    if policy.require_revocation_check and claims.get("revocation_checked") is not True:
        v.append(Violation("policy.refused", "revocation_checked",
                           "the policy requires an online revocation check (options.online)"))
    return tuple(v)


def enforce(claims: Mapping[str, Any], policy: NvidiaPolicy) -> None:
    """Raise ``policy.refused`` carrying every violation, or return when there is none."""
    violations = appraise(claims, policy)
    if violations:
        raise PolicyError(
            "policy.refused",
            "; ".join(f"{x.claim}: {x.detail}" for x in violations),
            violations=violations,
        )
