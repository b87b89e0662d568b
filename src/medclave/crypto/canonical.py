"""Canonical JSON (RFC 8785, JCS): the one byte form every digest and signature is taken over."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``; raises ``rfc8785.CanonicalizationError`` on floats it can't."""
    return bytes(rfc8785.dumps(value))


def canonical_sha256(value: Any) -> bytes:
    return hashlib.sha256(canonical_json(value)).digest()
