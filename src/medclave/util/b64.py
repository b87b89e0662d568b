"""Strict base64 (RFC 4648): the one decoder behind every format Medclave reads.

Lenient base64 is a parser-differential hole: Python's ``b64decode`` without ``validate`` drops
characters outside the alphabet, and every decoder ignores non-zero pad bits, so many texts decode
to the same bytes and a signed text could be altered without altering what it says. Here a text
is accepted only if it is *the* encoding of its bytes: the alphabet of §4 (standard) or §5
(URL-safe), the padding rule the format sets, a length that is not 1 mod 4 (§4: no whole byte),
and pad bits zero (§3.5), checked by re-encoding. Failures raise :class:`ValueError`; each caller
turns it into its own coded error.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

Padding = Literal["required", "forbidden", "optional"]

_ALPHABET = {False: re.compile(r"[A-Za-z0-9+/]*(={0,2})"), True: re.compile(r"[A-Za-z0-9_-]*(={0,2})")}


def b64encode(data: bytes, *, url: bool = False, pad: bool = True) -> str:
    """The canonical text of ``data``: standard (§4) or URL-safe (§5) alphabet, padded or not."""
    text = (base64.urlsafe_b64encode if url else base64.b64encode)(data).decode("ascii")
    return text if pad else text.rstrip("=")


def b64decode(text: str, *, url: bool = False, padding: Padding = "required") -> bytes:
    """The bytes ``text`` canonically encodes; :class:`ValueError` for any other text."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    match = _ALPHABET[url].fullmatch(text)
    if match is None:
        raise ValueError(f"a character outside the base64{'url' if url else ''} alphabet")
    has_pad = bool(match.group(1))
    if padding == "forbidden" and has_pad:
        raise ValueError("padding where none is allowed")
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        raise ValueError("an impossible length (1 mod 4)")
    if padding == "required" and len(text) % 4:
        raise ValueError("padding missing")
    if has_pad and len(text) % 4:
        raise ValueError("wrong padding")
    try:
        data = (base64.urlsafe_b64decode if url else base64.b64decode)(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the checks above rule these out
        raise ValueError(str(exc)) from exc
    if b64encode(data, url=url, pad=False) != body:
        raise ValueError("non-zero pad bits (not the canonical encoding)")
    return data
