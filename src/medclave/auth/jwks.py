"""Where verification keys come from: a JWKS (RFC 7517 §5) from a file or from the issuer.

:class:`HttpJwks` fetches an issuer's JWKS (found through OpenID Connect Discovery 1.0 §4, or
given directly), caches it for ``ttl``, refetches once when a token names an unknown ``kid``
(key rotation), and never refetches more often than ``min_refresh_interval`` so that a flood of
tokens with made-up ``kid`` values cannot turn the verifier into a traffic source against the
IdP. Plain ``http`` is refused except on loopback. Time is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httpx

from medclave.crypto.jose import JoseErrors, Jwk, parse_jwk
from medclave.errors import AuthError, InputError

# How JOSE refusals read in the auth layer: 401s with ``auth.*`` codes, for access tokens, DPoP
# proofs and JWKS alike (medclave.crypto.jose is the implementation).
AUTH_JOSE_ERRORS: Final = JoseErrors(
    AuthError,
    malformed="auth.token_malformed",
    algorithm="auth.algorithm_forbidden",
    signature="auth.signature_invalid",
    key="auth.key_unknown",
)

MAX_JWKS_BYTES: Final = 64 * 1024
MAX_KEYS: Final = 32
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"


class JwksProvider(Protocol):
    """Gives the key for ``kid`` usable with ``alg``, or raises an ``auth.*`` error."""

    def key_for(self, kid: str | None, alg: str, *, now: datetime) -> Jwk: ...


def parse_jwks(doc: Any) -> tuple[Jwk, ...]:
    """The usable signing keys of a JWKS document.

    Keys we cannot use (encryption keys, other curves) are skipped, as RFC 7517 §5 asks of
    readers; a document that is not a JWKS at all raises ``auth.jwks_unavailable``.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise AuthError("auth.jwks_unavailable", "the document is not a JWKS (no 'keys' array)")
    entries = doc["keys"]
    if len(entries) > MAX_KEYS:
        raise AuthError("auth.jwks_unavailable", f"the JWKS holds more than {MAX_KEYS} keys")
    keys: list[Jwk] = []
    for entry in entries:
        try:
            keys.append(parse_jwk(entry, errors=AUTH_JOSE_ERRORS))
        except AuthError:
            continue
    return tuple(keys)


def select_key(keys: Iterable[Jwk], kid: str | None, alg: str) -> Jwk:
    """The one key for (kid, alg). Without ``kid`` the issuer must have exactly one such key."""
    pool = list(keys)
    if kid is not None:
        named = [k for k in pool if k.kid == kid]
        if not named:
            raise AuthError("auth.key_unknown", f"no key with kid {kid[:64]!r}")
        matching = [k for k in named if k.algorithm == alg]
        if not matching:
            # The kid exists but belongs to another key type: an algorithm-confusion attempt.
            raise AuthError("auth.algorithm_forbidden", f"key {kid[:64]!r} is not an {alg} key")
    else:
        matching = [k for k in pool if k.algorithm == alg]
        if len(matching) > 1:
            raise AuthError("auth.key_unknown", "the token names no kid and several keys match")
        if not matching:
            raise AuthError("auth.key_unknown", f"the issuer has no {alg} key")
    if len(matching) != 1:
        raise AuthError("auth.key_unknown", "several keys share this kid")
    return matching[0]


@dataclass(frozen=True)
class StaticJwks:
    """A fixed key set: a JWKS file an operator supplies, or keys held in memory (tests)."""

    keys: tuple[Jwk, ...]
    # SHA-256 (hex) of the bytes the keys were read from (a file): what an enclave's runtime
    # states, computed from the very bytes it loaded, so the file cannot change in between.
    source_sha256: str | None = None

    @classmethod
    def from_document(cls, doc: Any) -> StaticJwks:
        try:
            keys = parse_jwks(doc)
        except AuthError as exc:
            raise InputError("config.invalid", f"invalid JWKS: {exc.detail}") from exc
        if not keys:
            raise InputError("config.invalid", "the JWKS holds no usable signing key")
        return cls(keys)

    @classmethod
    def from_file(cls, path: Path) -> StaticJwks:
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_JWKS_BYTES + 1)  # read once: parsed and digested alike
            if len(data) > MAX_JWKS_BYTES:
                raise InputError("input.too_large", f"{path.name} exceeds {MAX_JWKS_BYTES} bytes")
            doc = json.loads(data.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError("config.invalid", f"cannot read JWKS {path.name}: {exc}") from exc
        loaded = cls.from_document(doc)
        return cls(loaded.keys, hashlib.sha256(data).hexdigest())

    def key_for(self, kid: str | None, alg: str, *, now: datetime) -> Jwk:
        return select_key(self.keys, kid, alg)


def check_fetch_url(url: str, *, allow_insecure: bool = False) -> str:
    """Only https, or http to a loopback address (the dev IdP and tests)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and (allow_insecure or _is_loopback(host)):
        return url
    raise InputError("config.invalid", f"refusing to fetch keys over {parts.scheme or '?'}: {url}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_json(client: httpx.Client, url: str, *, max_bytes: int = MAX_JWKS_BYTES) -> Any:
    """GET a small JSON document, bounded in size; any failure is ``auth.jwks_unavailable``."""
    try:
        with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise AuthError("auth.jwks_unavailable", f"{url} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise AuthError("auth.jwks_unavailable", f"{url} sent more than {max_bytes} B")
    except httpx.HTTPError as exc:
        raise AuthError("auth.jwks_unavailable", f"cannot fetch {url}: {exc}") from exc
    try:
        return json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AuthError("auth.jwks_unavailable", f"{url} did not return JSON") from exc


def discover_jwks_uri(client: httpx.Client, issuer: str, *, allow_insecure: bool = False) -> str:
    """OpenID Connect Discovery 1.0 §4: the metadata's ``issuer`` must equal ours exactly."""
    check_fetch_url(issuer, allow_insecure=allow_insecure)
    meta = fetch_json(client, issuer.rstrip("/") + DISCOVERY_PATH)
    if not isinstance(meta, Mapping) or meta.get("issuer") != issuer:
        raise AuthError("auth.jwks_unavailable", "the discovery document names another issuer")
    uri = meta.get("jwks_uri")
    if not isinstance(uri, str):
        raise AuthError("auth.jwks_unavailable", "the discovery document has no jwks_uri")
    try:
        return check_fetch_url(uri, allow_insecure=allow_insecure)
    except InputError as exc:
        raise AuthError("auth.jwks_unavailable", exc.detail) from exc


class HttpJwks:
    """An issuer's JWKS over HTTP, cached for ``ttl`` and refreshed on an unknown ``kid``.

    Give ``jwks_uri``, or ``issuer`` to discover it on first use. Thread-safe.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None = None,
        issuer: str | None = None,
        client: httpx.Client | None = None,
        ttl: timedelta = timedelta(minutes=10),
        min_refresh_interval: timedelta = timedelta(seconds=30),
        max_stale: timedelta = timedelta(hours=1),
        allow_insecure: bool = False,
    ) -> None:
        if (jwks_uri is None) == (issuer is None):
            raise InputError("config.invalid", "give exactly one of jwks_uri and issuer")
        if min_refresh_interval <= timedelta(0) or ttl < min_refresh_interval:
            raise InputError("config.invalid", "need 0 < min_refresh_interval <= ttl")
        if jwks_uri is not None:
            check_fetch_url(jwks_uri, allow_insecure=allow_insecure)
        if issuer is not None:
            check_fetch_url(issuer, allow_insecure=allow_insecure)
        self._uri = jwks_uri
        self._issuer = issuer
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=5.0, follow_redirects=False)
        self._ttl, self._min_refresh, self._max_stale = ttl, min_refresh_interval, max_stale
        self._allow_insecure = allow_insecure
        self._lock = threading.Lock()
        self._keys: tuple[Jwk, ...] = ()
        self._fetched_at: datetime | None = None
        self._attempted_at: datetime | None = None
        self.fetches = 0  # observable for tests and metrics

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> HttpJwks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _may_attempt(self, now: datetime) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh

    def _refresh(self, now: datetime) -> None:
        self._attempted_at = now
        self.fetches += 1
        if self._uri is None:
            assert self._issuer is not None
            self._uri = discover_jwks_uri(self._client, self._issuer, allow_insecure=self._allow_insecure)
        self._keys = parse_jwks(fetch_json(self._client, self._uri))
        self._fetched_at = now

    def _ensure_fresh(self, now: datetime) -> None:
        fresh = self._fetched_at is not None and now - self._fetched_at < self._ttl
        if fresh or not self._may_attempt(now):
            if self._fetched_at is None:
                raise AuthError("auth.jwks_unavailable", "the issuer's keys could not be fetched")
            if now - self._fetched_at >= self._ttl + self._max_stale:
                raise AuthError("auth.jwks_unavailable", "the cached keys are too old")
            return
        try:
            self._refresh(now)
        except AuthError:
            # Serve the previous keys a little longer if the IdP is briefly down; never forever.
            if self._fetched_at is None or now - self._fetched_at >= self._ttl + self._max_stale:
                raise

    def key_for(self, kid: str | None, alg: str, *, now: datetime) -> Jwk:
        with self._lock:
            self._ensure_fresh(now)
            try:
                return select_key(self._keys, kid, alg)
            except AuthError as exc:
                if exc.code != "auth.key_unknown" or not self._may_attempt(now):
                    raise
            # Unknown kid: the issuer may have rotated. One refetch, rate-limited.
            self._refresh(now)
            return select_key(self._keys, kid, alg)
