"""Strict decoders for the JSON and text encodings inside vTPM evidence.

Lenient decoders are a classic parser-differential hole: Python's ``bytes.fromhex`` skips
whitespace, ``base64.urlsafe_b64decode`` drops characters outside the alphabet, and ``json``
keeps the last of duplicate keys where another verifier may keep the first. Everything here
refuses such input instead, with ``attestation.malformed``.
"""

from __future__ import annotations

import re
from typing import Any

from medclave.attestation.core import ATTESTATION_JOSE_ERRORS
from medclave.crypto.jose import strict_json as _strict_json
from medclave.errors import AttestationError
from medclave.util.b64 import b64decode

_HEX = re.compile(r"[0-9a-fA-F]*")


def malformed(detail: str) -> AttestationError:
    return AttestationError("attestation.malformed", detail)


def strict_json(data: bytes | str, *, what: str, maximum: int) -> Any:
    """RFC 8259 JSON, UTF-8, no duplicate keys, finite numbers, at most ``maximum`` bytes."""
    if len(data) > maximum:
        raise malformed(f"{what} is {len(data)} bytes, over {maximum}")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # crypto.jose's strict reader, refusing as the attestation layer does.
    return _strict_json(raw, errors=ATTESTATION_JOSE_ERRORS, what=what)


def hex_bytes(value: object, *, what: str, maximum: int) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * maximum or len(value) % 2:
        raise malformed(f"{what} is not a hex string of at most {maximum} bytes")
    if not _HEX.fullmatch(value):
        raise malformed(f"{what} is not hex")
    return bytes.fromhex(value)


def _b64(value: object, *, what: str, maximum: int, url: bool) -> bytes:
    if not isinstance(value, str) or len(value) > (maximum * 4) // 3 + 4:
        raise malformed(f"{what} is not a base64 string of at most {maximum} bytes")
    try:
        out = b64decode(value, url=url, padding="optional")
    except ValueError as exc:
        raise malformed(f"{what} is not base64{'url' if url else ''}: {exc}") from None
    if len(out) > maximum:
        raise malformed(f"{what} is {len(out)} bytes, over {maximum}")
    return out


def b64_bytes(value: object, *, what: str, maximum: int) -> bytes:
    """Standard-alphabet base64 (RFC 4648 §4), padding optional, canonical (pad bits zero)."""
    return _b64(value, what=what, maximum=maximum, url=False)


def b64url_bytes(value: object, *, what: str, maximum: int) -> bytes:
    """URL-safe base64 (RFC 4648 §5), padding optional (JWK members omit it, serde keeps it),
    canonical (pad bits zero)."""
    return _b64(value, what=what, maximum=maximum, url=True)


def byte_list(value: object, *, what: str, maximum: int) -> bytes:
    """A JSON array of integers 0..255 (serde's encoding of ``Vec<u8>``)."""
    if not isinstance(value, list) or len(value) > maximum:
        raise malformed(f"{what} is not a byte array of at most {maximum} bytes")
    if not all(type(b) is int and 0 <= b <= 255 for b in value):
        raise malformed(f"{what} holds a value that is not a byte")
    return bytes(value)
