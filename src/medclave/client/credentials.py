"""The proxy's credentials at the hospital's IdP: short-lived tokens, fetched and kept fresh.

Access tokens live at most 15 minutes; an app behind the proxy runs for hours with one API key.
The proxy holds a client credential (``client_id`` and secret) and:

* fetches its own token with the client-credentials grant (RFC 6749 §4.4, secret sent as HTTP
  Basic, §2.3.1);
* fetches a token per user with token exchange (RFC 8693): ``subject_token`` its own token,
  ``requested_subject`` the user it authenticated (an API key, its SSO's header), ``scope`` the
  roles. A user's own token (an app's DPoP-bound one) is exchanged as the subject itself;
* binds every token to its own DPoP key (RFC 9449 §5: a proof on the token request), so a token
  copied out of the proxy is useless without that key, and signs a fresh proof for each inner
  request (:meth:`Credentials.proof`).

Each token is kept fresh by a :class:`Refreshing` holder: renewed once 80% of its lifetime has
passed; one renewal in flight at a time (other callers keep using the current token meanwhile);
a failed renewal retried with exponential backoff (at least what ``Retry-After`` asks) while the
current token is still valid. Only a caller with no valid token waits for the IdP and sees its
failure. Per-user holders are kept in a bounded cache (least recently used evicted first).

Refusals the app sees: ``auth.forbidden`` (403) when the IdP refuses that user or those roles,
``auth.rate_limited`` (429) when it asks to slow down, ``client.idp_unavailable`` (502) when the
proxy itself cannot get tokens (IdP down, the proxy's client refused).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from medclave.auth.dpop import create_dpop_proof
from medclave.auth.exchange import ACCESS_TOKEN_TYPE, GRANT_TYPE
from medclave.auth.jwks import check_fetch_url
from medclave.auth.tokens import MAX_LIFETIME
from medclave.errors import AuthError, ClientError, InputError, MedclaveError
from medclave.protocol.inference import INNER_AUTHORITY, INNER_SCHEME
from medclave.util.clock import Clock, system_clock

log = logging.getLogger("medclave.proxy.credentials")

REFRESH_AT: Final = 0.8  # of a token's lifetime
MAX_ANSWER_BYTES: Final = 64 * 1024
MAX_TOKEN_CHARS: Final = 8192
MAX_USERS: Final = 10_000
BACKOFF_FIRST: Final = 1.0
BACKOFF_MAX: Final = 60.0
# The IdP's own refusals of a user (not of the proxy): the app is told 403.
_USER_REFUSALS: Final = frozenset({"invalid_scope", "invalid_request", "invalid_grant",
                                   "invalid_target"})


@dataclass(frozen=True, kw_only=True)
class IdpClientConfig:
    """Where and as whom the proxy asks for tokens."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    audience: str = "medclave"
    dpop: bool = True  # bind tokens to the proxy's key (RFC 9449)

    def __post_init__(self) -> None:
        check_fetch_url(self.token_url)  # https, or http to loopback only
        if not self.client_id or not self.client_secret:
            raise InputError("config.invalid", "the IdP client needs an id and a secret")


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    bound: bool  # DPoP-bound to the proxy's key
    expires: datetime
    refresh_at: datetime

    def authorization(self) -> str:
        return f"{'DPoP' if self.bound else 'Bearer'} {self.value}"


class Refreshing:
    """One token kept fresh (see the module docstring); ``get()`` never returns an expired one."""

    def __init__(self, fetch: Callable[[], AccessToken], *, clock: Clock) -> None:
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()  # held by the one renewal in flight
        self._token: AccessToken | None = None
        self._next_try: datetime | None = None
        self._backoff = BACKOFF_FIRST

    def _usable(self, token: AccessToken | None, now: datetime) -> bool:
        return token is not None and now < token.expires

    def get(self) -> AccessToken:
        now = self._clock()
        token = self._token
        if token is not None and now < token.refresh_at:
            return token
        if token is not None and self._usable(token, now):
            # Due for renewal but still valid: one caller renews, the others go on with it.
            due = self._next_try is None or now >= self._next_try
            if due and self._lock.acquire(blocking=False):
                try:
                    self._renew(quiet=True)
                finally:
                    self._lock.release()
            renewed = self._token
            return renewed if renewed is not None and renewed is not token else token
        with self._lock:  # no valid token: wait for the one renewal, or make it
            token = self._token
            if token is not None and self._usable(token, self._clock()):
                return token
            self._renew(quiet=False)
            assert self._token is not None
            return self._token

    def _renew(self, *, quiet: bool) -> None:
        try:
            self._token = self._fetch()
        except MedclaveError as exc:
            wait = self._backoff
            if isinstance(exc, AuthError) and exc.code == "auth.rate_limited":
                wait = max(wait, float(exc.context.get("retry_after", 0)))
            self._next_try = self._clock() + timedelta(seconds=wait)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            if not quiet:
                raise
            log.warning("token renewal failed (%s); retrying in %.0f s with the current token",
                        exc.code, wait)
            return
        self._next_try = None
        self._backoff = BACKOFF_FIRST


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: each part form-urlencoded before base64.
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class Credentials:
    """The proxy's tokens: its own, and one per user it acts for."""

    def __init__(self, config: IdpClientConfig, *, clock: Clock = system_clock,
                 http: httpx.Client | None = None, max_users: int = MAX_USERS) -> None:
        self.config = config
        self._clock = clock
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=10.0)
        # The proxy's DPoP key lives in memory only: after a restart, new tokens are fetched.
        self._key = ec.generate_private_key(ec.SECP256R1()) if config.dpop else None
        self._own = Refreshing(self._client_credentials, clock=clock)
        self._users: OrderedDict[tuple[str, ...], Refreshing] = OrderedDict()
        self._users_lock = threading.Lock()
        self._max_users = max_users
        self.requests: Counter[str] = Counter()  # token requests made, by grant (monitoring)

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    # --- tokens ------------------------------------------------------------------------------

    def own_token(self) -> AccessToken:
        return self._own.get()

    def user_token(self, subject: str, roles: tuple[str, ...] = ()) -> AccessToken:
        """A token for ``subject`` with ``roles`` (none: the user's directory roles)."""
        return self._holder(("user", subject, *roles), lambda: self._exchange(
            {"requested_subject": subject, **({"scope": " ".join(roles)} if roles else {})},
            subject_token=self.own_token().value)).get()

    def exchanged(self, subject_token: str) -> AccessToken:
        """A token for the user of ``subject_token`` (one of the IdP's), bound to this proxy."""
        return self._holder(("subject", subject_token), lambda: self._exchange(
            {}, subject_token=subject_token)).get()

    def _holder(self, key: tuple[str, ...], fetch: Callable[[], AccessToken]) -> Refreshing:
        with self._users_lock:
            holder = self._users.get(key)
            if holder is None:
                holder = self._users[key] = Refreshing(fetch, clock=self._clock)
                while len(self._users) > self._max_users:
                    self._users.popitem(last=False)
            self._users.move_to_end(key)
            return holder

    def proof(self, token: AccessToken, method: str, path: str) -> str | None:
        """A DPoP proof for one inner request (the enclave checks it against its inner URL,
        ``https://enclave/...``), or None for an unbound token. Its time is the system's: the
        enclave compares ``iat`` with its own clock."""
        if not token.bound or self._key is None:
            return None
        return create_dpop_proof(self._key, method=method,
                                 url=f"{INNER_SCHEME}://{INNER_AUTHORITY}{path}",
                                 now=datetime.now(UTC), access_token=token.value)

    # --- the token endpoint --------------------------------------------------------------------

    def _client_credentials(self) -> AccessToken:
        return self._token_request({"grant_type": "client_credentials"}, "client_credentials")

    def _exchange(self, form: dict[str, str], *, subject_token: str) -> AccessToken:
        return self._token_request({"grant_type": GRANT_TYPE, "subject_token": subject_token,
                                    "subject_token_type": ACCESS_TOKEN_TYPE, **form},
                                   "token_exchange")

    def _token_request(self, form: dict[str, str], grant: str) -> AccessToken:
        cfg = self.config
        headers = {"Authorization": _basic(cfg.client_id, cfg.client_secret),
                   "Accept": "application/json"}
        if self._key is not None:
            headers["DPoP"] = create_dpop_proof(self._key, method="POST", url=cfg.token_url,
                                                now=datetime.now(UTC))
        self.requests[grant] += 1
        started = self._clock()
        try:
            with self._http.stream("POST", cfg.token_url, data={**form, "audience": cfg.audience},
                                   headers=headers) as response:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise ClientError("client.idp_unavailable", "the IdP's answer is too big")
                status, retry_after = response.status_code, response.headers.get("retry-after")
        except httpx.HTTPError as exc:
            raise ClientError("client.idp_unavailable", f"IdP unreachable: {exc!r}") from exc
        answer = _json(body)
        if status != 200:
            raise _refusal(status, answer, retry_after, form.get("requested_subject"))
        return self._parse(answer, started)

    def _parse(self, answer: dict[str, Any], issued: datetime) -> AccessToken:
        value, kind, lifetime = (answer.get("access_token"), answer.get("token_type"),
                                 answer.get("expires_in"))
        if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_CHARS or " " in value:
            raise ClientError("client.idp_unavailable", "the IdP answered no usable token")
        if not isinstance(kind, str) or kind.lower() not in ("bearer", "dpop"):
            raise ClientError("client.idp_unavailable", "the IdP answered an unknown token type")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not (
                0 < lifetime <= MAX_LIFETIME.total_seconds()):
            raise ClientError("client.idp_unavailable", "the IdP's expires_in is missing or "
                              "beyond 15 minutes")
        # Measured from when the request was sent: the token may be older than its answer.
        return AccessToken(value, kind.lower() == "dpop",
                           expires=issued + timedelta(seconds=lifetime),
                           refresh_at=issued + timedelta(seconds=lifetime * REFRESH_AT))


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ClientError("client.idp_unavailable", "the IdP answered something not JSON")
    return value


def _refusal(status: int, answer: dict[str, Any], retry_after: str | None,
             subject: str | None) -> MedclaveError:
    error = str(answer.get("error", ""))[:64]
    code = str(answer.get("code", ""))[:64]
    if status == 429 or error == "slow_down":
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else 1
        return AuthError("auth.rate_limited", "the IdP asks the proxy to slow down",
                         retry_after=min(seconds, 3600))
    if status == 400 and error in _USER_REFUSALS and code != "input.malformed":
        who = f" for {subject!r}" if subject else ""
        return AuthError("auth.forbidden", f"the IdP refused a token{who}: {code or error}")
    # invalid_client, unauthorized_client, 5xx: the proxy's own standing, not the app's fault.
    log.error("the IdP refused the proxy's token request: HTTP %d %s %s", status, error, code)
    return ClientError("client.idp_unavailable", f"the IdP answered HTTP {status} {error}")
