"""JSON in and out: canonical bytes (RFC 8785, JCS), the one byte form every digest and
signature is taken over, and :func:`load_json`, the parse of untrusted JSON bytes.

RFC 8785 §3.2.2.3 serialises numbers as IEEE 754 doubles, as I-JSON requires (RFC 7493 §2.2):
an integer beyond ±(2^53 − 1) has no exact form, nor do NaN and the infinities. Such a value is
refused as ``input.malformed`` (never rounded, which would let two values share one digest),
and so is anything else JSON cannot hold.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

from medclave.errors import InputError

# RFC 8785's integer domain (the rfc8785 package raises IntegerDomainError outside it).
MAX_EXACT_INTEGER = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``; ``input.malformed`` for a value without a canonical form (an
    integer beyond ±(2^53 − 1), NaN, an infinity, a non-string key, nesting past Python's
    recursion limit)."""
    try:
        return bytes(rfc8785.dumps(value))
    except rfc8785.IntegerDomainError as exc:
        raise InputError("input.malformed",
                         f"an integer beyond ±(2^53 - 1) has no exact JSON form: {exc}") from exc
    except (rfc8785.CanonicalizationError, RecursionError) as exc:
        raise InputError("input.malformed", f"no canonical JSON form (RFC 8785): {exc}") from exc


def load_json(data: bytes | str, *, what: str = "the body") -> Any:
    """The JSON value in untrusted ``data``; ``input.malformed`` for anything that is not JSON,
    including nesting deeper than the parser recurses (CPython's json raises RecursionError, not
    ValueError, for 100,000 nested brackets)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputError("input.malformed", f"{what} is not JSON") from exc


def canonical_sha256(value: Any) -> bytes:
    return hashlib.sha256(canonical_json(value)).digest()
