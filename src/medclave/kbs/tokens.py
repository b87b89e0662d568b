"""Owner API tokens: ``mkt1.OWNER.SECRET``, 256 random bits, stored only as SHA-256 hashes.

The owner name in the token only selects which hashes to compare; the comparison itself is
constant time (``hmac.compare_digest``) against every hash the owner holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from datetime import datetime

from medclave.errors import AuthError
from medclave.kbs.names import OWNER_RE, valid_owner
from medclave.kbs.store import KbsStore

PREFIX = "mkt1"
MAX_TOKEN_CHARS = 200


def token_hash(token: str) -> bytes:
    return hashlib.sha256(b"medclave-kbs-owner-token\x00" + token.encode()).digest()


def issue_owner_token(store: KbsStore, owner: str, *, now: datetime) -> str:
    """A fresh token for ``owner``; shown once, only its hash is kept."""
    valid_owner(owner)
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    token = f"{PREFIX}.{owner}.{secret}"
    store.add_owner_token(owner, token_hash(token), now)
    return token


def authenticate(store: KbsStore, token: str | None) -> str:
    """The owner ``token`` belongs to, or ``auth.token_missing`` / ``auth.invalid_credentials``."""
    if not token:
        raise AuthError("auth.token_missing")
    parts = token.split(".")
    if (
        len(token) > MAX_TOKEN_CHARS
        or len(parts) != 3
        or parts[0] != PREFIX
        or not OWNER_RE.fullmatch(parts[1])
    ):
        raise AuthError("auth.invalid_credentials", "not an owner token")
    presented = token_hash(token)
    ok = False
    for stored in store.owner_token_hashes(parts[1]):
        ok |= hmac.compare_digest(stored, presented)
    if not ok:
        raise AuthError("auth.invalid_credentials", "unknown owner token")
    return parts[1]
