"""Intel PCS documents: SGX and TDX TCB Info v3, and the SGX and TDX QE identities (Enclave
Identity v2), shared by the ``sgx`` and ``tdx`` platforms.

Parsing only; signatures are checked in ``verify`` and TCB levels matched in ``tcb``.
Sources: Intel "Provisioning Certification Service for ECDSA Attestation" API (v4),
"Get TDX TCB Information" and "Get TDX Quoting Enclave Identity": each response is
``{"tcbInfo"|"enclaveIdentity": {...}, "signature": hex}`` where the signature (ECDSA P-256,
r||s) is over the exact bytes of the member's value as it appears in the response body. That is
why :func:`top_level_members` cuts the member out of the raw bytes rather than re-serialising it.
Every field is type-checked (a JSON ``true`` is not an SVN) and every list is bounded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from medclave.attestation.core import TCB_STATUS_ORDER
from medclave.errors import AttestationError

MAX_COLLATERAL_BYTES = 256 * 1024
MAX_TCB_LEVELS = 128
MAX_ADVISORIES = 256

# What Intel's TCB Info may say of a level: every status but our own NoMatch (no level matched).
TCB_STATUSES = frozenset(TCB_STATUS_ORDER) - {"NoMatch"}

_WS = " \t\n\r"
# The decoder's own string scanner (C-accelerated), typed here since typeshed omits it.
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def invalid(detail: str) -> AttestationError:
    return AttestationError("attestation.collateral_invalid", detail)


# --- the exact bytes of a top-level JSON member ------------------------------------------


def top_level_members(raw: bytes) -> dict[str, tuple[Any, bytes]]:
    """Map each member of the top-level JSON object to (parsed value, exact raw bytes).

    The PCS signs the member's bytes as sent, so they are cut from the document by walking
    its top level with the standard decoder (which also checks the syntax of each value).
    """
    if len(raw) > MAX_COLLATERAL_BYTES:
        raise invalid(f"collateral document is {len(raw)} bytes, over {MAX_COLLATERAL_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"collateral is not UTF-8: {exc}") from exc
    decoder = json.JSONDecoder()
    out: dict[str, tuple[Any, bytes]] = {}

    def skip(i: int) -> int:
        while i < len(text) and text[i] in _WS:
            i += 1
        return i

    def expect(i: int, char: str) -> int:
        if i >= len(text) or text[i] != char:
            raise invalid(f"collateral JSON: expected {char!r} at offset {i}")
        return i + 1

    try:
        i = expect(skip(0), "{")
        i = skip(i)
        if i < len(text) and text[i] == "}":
            i += 1
        else:
            while True:
                i = expect(i, '"')
                key, i = _scanstring(text, i)
                i = skip(expect(skip(i), ":"))
                value, end = decoder.raw_decode(text, i)
                if key in out:
                    raise invalid(f"collateral JSON: duplicate member {key!r}")
                out[key] = (value, text[i:end].encode("utf-8"))
                i = skip(end)
                if i < len(text) and text[i] == ",":
                    i = skip(i + 1)
                    continue
                i = expect(i, "}")
                break
    except (ValueError, RecursionError, IndexError) as exc:
        raise invalid(f"collateral JSON: {type(exc).__name__}: {str(exc)[:120]}") from exc
    if skip(i) != len(text):
        raise invalid("collateral JSON: data after the top-level object")
    return out


# --- typed fields ---------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    # bool is an int in Python; JSON true is not a number.
    if value is None or type(value) is not kind:
        raise invalid(f"{where}: {key!r} missing or not a {kind.__name__}")
    return value


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{where}: not a JSON object")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str, limit: int) -> list[Any]:
    value = _get(obj, key, list, where)
    if len(value) > limit:
        raise invalid(f"{where}: {key!r} has {len(value)} entries, over {limit}")
    return list(value)


def _hex(obj: Mapping[str, Any], key: str, size: int, where: str) -> bytes:
    text = _get(obj, key, str, where)
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise invalid(f"{where}: {key!r} is not hex") from exc
    if len(value) != size:
        raise invalid(f"{where}: {key!r} is {len(value)} bytes, expected {size}")
    return value


def _time(obj: Mapping[str, Any], key: str, where: str) -> datetime:
    text = _get(obj, key, str, where)
    if len(text) > 40:
        raise invalid(f"{where}: {key!r} is not an ISO 8601 time")
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise invalid(f"{where}: {key!r} is not an ISO 8601 time") from exc
    if value.tzinfo is None:
        raise invalid(f"{where}: {key!r} has no time zone")
    return value


def _svn(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= 0xFFFF:
        raise invalid(f"{where}: SVN out of range")
    return value


def _status(obj: Mapping[str, Any], where: str) -> str:
    status = _get(obj, "tcbStatus", str, where)
    if status not in TCB_STATUSES:
        raise invalid(f"{where}: unrecognised tcbStatus {status[:40]!r}")
    return str(status)


def _advisories(obj: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "advisoryIDs" not in obj:
        return ()
    ids = _list(obj, "advisoryIDs", where, MAX_ADVISORIES)
    if not all(type(a) is str and len(a) <= 64 for a in ids):
        raise invalid(f"{where}: advisoryIDs must be short strings")
    return tuple(ids)


# --- tcbInfo (TCB Info v3, id "TDX") and enclaveIdentity (v2, id "TD_QE") -------------------


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    status: str
    tcb_date: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class IsvLevel:
    """A level of an enclave or TDX module identity: matched on ISVSVN alone."""

    isv_svn: int
    status: str
    tcb_date: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    """``tdxModule`` (no ``id``, no levels) or one of ``tdxModuleIdentities``."""

    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[IsvLevel, ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    id: str  # "SGX" or "TDX": which platform's quotes it appraises
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    evaluation_data_number: int
    tdx_module: TdxModule | None
    module_identities: tuple[TdxModule, ...]
    levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class EnclaveIdentity:
    id: str  # "QE" (the SGX Quoting Enclave) or "TD_QE" (the TDX one)
    version: int
    issue_date: datetime
    next_update: datetime
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    evaluation_data_number: int
    levels: tuple[IsvLevel, ...]


def _components(tcb: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    items = _list(tcb, key, where, 16)
    if len(items) != 16:
        raise invalid(f"{where}: {key!r} must have 16 components")
    return tuple(_svn(_get(_obj(c, where), "svn", int, where), where) for c in items)


def _isv_levels(obj: Mapping[str, Any], where: str) -> tuple[IsvLevel, ...]:
    out: list[IsvLevel] = []
    for n, item in enumerate(_list(obj, "tcbLevels", where, MAX_TCB_LEVELS)):
        at = f"{where} tcbLevels[{n}]"
        level = _obj(item, at)
        tcb = _obj(level.get("tcb"), at)
        out.append(
            IsvLevel(
                isv_svn=_svn(_get(tcb, "isvsvn", int, at), at),
                status=_status(level, at),
                tcb_date=str(_get(level, "tcbDate", str, at))[:40],
                advisory_ids=_advisories(level, at),
            )
        )
    return tuple(out)


def _module(obj: Mapping[str, Any], where: str, *, with_levels: bool) -> TdxModule:
    ident = str(_get(obj, "id", str, where))[:16] if with_levels else ""
    return TdxModule(
        id=ident,
        mr_signer=_hex(obj, "mrsigner", 48, where),
        attributes=_hex(obj, "attributes", 8, where),
        attributes_mask=_hex(obj, "attributesMask", 8, where),
        levels=_isv_levels(obj, where) if with_levels else (),
    )


def parse_tcb_info(value: Any) -> TcbInfo:
    """The parsed ``tcbInfo`` member: TCB Info v3 with id "SGX" or "TDX" (only TDX levels carry
    ``tdxtcbcomponents``). Which id a quote accepts is the verifier's check."""
    info = _obj(value, "tcbInfo")
    where = "tcbInfo"
    kind = info.get("id")
    if kind not in ("SGX", "TDX") or info.get("version") != 3:
        raise invalid("tcbInfo is not TCB Info version 3 with id 'SGX' or 'TDX'")
    levels: list[TcbLevel] = []
    for n, item in enumerate(_list(info, "tcbLevels", where, MAX_TCB_LEVELS)):
        at = f"tcbInfo tcbLevels[{n}]"
        level = _obj(item, at)
        tcb = _obj(level.get("tcb"), at)
        levels.append(
            TcbLevel(
                sgx_components=_components(tcb, "sgxtcbcomponents", at),
                pce_svn=_svn(_get(tcb, "pcesvn", int, at), at),
                tdx_components=(_components(tcb, "tdxtcbcomponents", at) if kind == "TDX"
                                else ()),
                status=_status(level, at),
                tcb_date=str(_get(level, "tcbDate", str, at))[:40],
                advisory_ids=_advisories(level, at),
            )
        )
    if not levels:
        raise invalid("tcbInfo has no TCB levels")
    module = info.get("tdxModule")
    identities = info.get("tdxModuleIdentities", [])
    if not isinstance(identities, list) or len(identities) > MAX_TCB_LEVELS:
        raise invalid("tcbInfo: tdxModuleIdentities is not a short list")
    return TcbInfo(
        id=str(kind),
        version=3,
        issue_date=_time(info, "issueDate", where),
        next_update=_time(info, "nextUpdate", where),
        fmspc=_hex(info, "fmspc", 6, where),
        pce_id=_hex(info, "pceId", 2, where),
        evaluation_data_number=int(_get(info, "tcbEvaluationDataNumber", int, where)),
        tdx_module=(
            None if module is None else _module(_obj(module, where), where, with_levels=False)
        ),
        module_identities=tuple(
            _module(_obj(m, where), f"tdxModuleIdentities[{n}]", with_levels=True)
            for n, m in enumerate(identities)
        ),
        levels=tuple(levels),
    )


def parse_enclave_identity(value: Any) -> EnclaveIdentity:
    """The parsed ``enclaveIdentity`` member: the SGX (``QE``) or TDX (``TD_QE``) Quoting
    Enclave identity, version 2. Which id a quote accepts is the verifier's check."""
    ident = _obj(value, "enclaveIdentity")
    where = "enclaveIdentity"
    kind = ident.get("id")
    if kind not in ("QE", "TD_QE") or ident.get("version") != 2:
        raise invalid("enclaveIdentity is not a QE identity version 2 (id 'QE' or 'TD_QE')")
    return EnclaveIdentity(
        id=str(kind),
        version=2,
        issue_date=_time(ident, "issueDate", where),
        next_update=_time(ident, "nextUpdate", where),
        miscselect=int.from_bytes(_hex(ident, "miscselect", 4, where), "big"),
        miscselect_mask=int.from_bytes(_hex(ident, "miscselectMask", 4, where), "big"),
        attributes=_hex(ident, "attributes", 16, where),
        attributes_mask=_hex(ident, "attributesMask", 16, where),
        mr_signer=_hex(ident, "mrsigner", 32, where),
        isv_prod_id=_svn(_get(ident, "isvprodid", int, where), where),
        evaluation_data_number=int(_get(ident, "tcbEvaluationDataNumber", int, where)),
        levels=_isv_levels(ident, where),
    )
