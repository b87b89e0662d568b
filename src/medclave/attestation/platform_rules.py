"""Each platform's own rule set, read from a policy's ``[platform.NAME.rules]`` table.

The generic reference values in :mod:`.policy` read the same over every platform; these are the
checks that need a platform's knowledge (SNP TCB components per product, TDX TCB statuses and
QE identity, NVIDIA version ordering and RIM coverage). Lists in TOML become frozensets.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from medclave.attestation.core import Violation


def _as_frozen(value: Any) -> Any:
    if isinstance(value, list):
        return frozenset(value)
    if isinstance(value, Mapping):
        return {k: _as_frozen(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


@functools.cache
def _field_adapters(cls: Any) -> dict[str, TypeAdapter[Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(cls)}


def _dataclass_rules(cls: Any, raw: Mapping[str, Any]) -> Any:
    adapters = _field_adapters(cls)
    unknown = sorted(set(raw) - set(adapters))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")
    # Strict types: the dataclasses do not check their fields, and a TOML string where a boolean
    # belongs ("false") is truthy, which would turn a rule such as allow_smt off without a word.
    values: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            values[name] = adapters[name].validate_python(_as_frozen(value), strict=True)
        except ValidationError as exc:
            raise ValueError(f"{cls.__name__}.{name}: {exc.errors()[0]['msg']}") from None
    return cls(**values)


def build(platform: str, raw: Mapping[str, Any]) -> Any:
    """The typed rule object; raises ValueError/TypeError for an invalid table."""
    if platform in ("sev-snp", "sim"):
        from medclave.attestation.sevsnp.rules import SnpRules

        return _dataclass_rules(SnpRules, raw)
    if platform == "tdx":
        from medclave.attestation.tdx.rules import TdxRules

        return _dataclass_rules(TdxRules, raw)
    if platform == "nvidia":
        from medclave.attestation.nvidia.rules import NvidiaPolicy

        return NvidiaPolicy.model_validate(dict(raw))
    raise ValueError(f"platform {platform!r} has no rule set; use reference_values")


def check(platform: str, raw: Mapping[str, Any], claims: Mapping[str, Any], *,
          tcb_status: str) -> list[Violation]:
    rules = build(platform, raw)
    if platform in ("sev-snp", "sim"):
        from medclave.attestation.sevsnp.rules import appraise as snp

        return list(snp(claims, rules))
    if platform == "tdx":
        from medclave.attestation.tdx.rules import appraise as tdx

        return list(tdx(claims, rules, tcb_status=tcb_status))
    from medclave.attestation.nvidia.rules import appraise as nvidia

    return list(nvidia(claims, rules))
