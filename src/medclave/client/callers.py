"""Who an app's request is for, and the credential the proxy sends for it inside the encapsulation.

An app reaches the proxy in one of four ways; the enclave only ever sees the last column:

========================================  ====================================================
app sends                                 the proxy sends inside the encapsulation
========================================  ====================================================
``Bearer mck_...`` (a local API key)      a per-user token from the IdP (token exchange),
                                          bound to the proxy's DPoP key, with a fresh proof
the SSO's identity header, from a         the same, for the user the header names
trusted proxy address only
``DPoP <token>`` + ``DPoP: <proof>``      the proof is checked here, against the URL the app
(the app's own DPoP-bound token)          called; the token is exchanged for one bound to the
                                          proxy's key, with a fresh proof for the inner URL
``Bearer <JWT>`` (the app's own token)    the token as it came (unchanged behaviour)
========================================  ====================================================

DPoP through the proxy (issue 10). RFC 9449 binds a proof to the URL its client called
(``htu``): for an app, that is the proxy's URL, which the enclave cannot check (the inner
request names ``https://enclave/...`` and says nothing of where the app connected). So the
proxy terminates DPoP: it is the resource server the app's proof is for, and it checks that
proof (method, URL, ``ath``, key thumbprint against the token's ``cnf.jkt``, one-time ``jti``)
exactly as the enclave would. Then, as a client in its own right, it holds a DPoP key of its own:
every token it obtains is bound to that key at the IdP, and every inner request carries a fresh
proof for the enclave's inner URL, which the enclave checks unchanged. A token or proof copied
from inside the encapsulation is as useless without the proxy's key as the app's token is
without the app's. A proof made for the enclave's inner URL (the Medclave SDK's) passes through
too: the app's token is then forwarded with its proof.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from medclave.auth.authn import parse_authorization
from medclave.auth.dpop import normalize_htu, verify_dpop_proof
from medclave.auth.jwks import AUTH_JOSE_ERRORS
from medclave.auth.replay import MemoryReplayCache, ReplayCache
from medclave.auth.tokens import is_valid_name
from medclave.client.apikeys import ApiKeys, looks_like_api_key
from medclave.client.credentials import AccessToken, Credentials
from medclave.crypto.jose import SUPPORTED_ALGORITHMS, parse_compact
from medclave.errors import AuthError, InputError
from medclave.protocol.inference import INNER_AUTHORITY, INNER_SCHEME


@dataclass(frozen=True)
class Upstream:
    """The headers that go inside the encapsulation for one request."""

    authorization: str | None = None
    dpop: str | None = None

    def headers(self) -> dict[str, str]:
        out = {"authorization": self.authorization, "dpop": self.dpop}
        return {k: v for k, v in out.items() if v is not None}


def _one(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    found = [v for k, v in headers.items() if k.lower() == wanted]
    if len(found) > 1:
        raise AuthError("auth.invalid_credentials", f"more than one {name} header")
    return found[0] if found else None


def peer_is_trusted(peer: str | None, trusted: tuple[str, ...]) -> bool:
    """Whether the TCP peer is one of the configured proxy addresses (IPs or networks)."""
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    for item in trusted:
        if "/" in item:
            if address in ipaddress.ip_network(item, strict=True):
                return True
        elif address == ipaddress.ip_address(item):
            return True
    return False


class Callers:
    """``upstream(headers, peer=..., method=..., url=..., path=...)``: what to send for an app."""

    def __init__(self, *, credentials: Credentials | None, keys: ApiKeys | None,
                 identity_header: str | None = None, trusted_proxies: tuple[str, ...] = (),
                 header_roles: tuple[str, ...] = (), replay: ReplayCache | None = None) -> None:
        if identity_header is not None and credentials is None:
            raise InputError("config.invalid", "an identity header needs the proxy's IdP client")
        if identity_header is not None and not trusted_proxies:
            raise InputError("config.invalid", "an identity header needs trusted proxy "
                             "addresses: from anyone else it is refused")
        self._credentials = credentials
        self._keys = keys
        self._header = identity_header
        self._trusted = trusted_proxies
        self._header_roles = header_roles
        # The apps' DPoP proofs (shared by the proxy's replicas when given: ProxySettings.store).
        self._replay = replay if replay is not None else MemoryReplayCache(max_entries=100_000)

    def close(self) -> None:
        if self._credentials is not None:
            self._credentials.close()
        if self._keys is not None:
            self._keys.close()

    def upstream(self, headers: Mapping[str, str], *, peer: str | None, method: str,
                 url: str, path: str) -> Upstream:
        """``url``: the proxy URL the app called (its DPoP proofs name it); ``path``: the inner
        path. Raises ``auth.*`` (401/403/429) or ``client.idp_unavailable`` (502)."""
        if self._header is not None:
            user = _one(headers, self._header)
            if user is not None:
                return self._for_header(user, peer, method, path)
        value = _one(headers, "authorization")
        if value is None:
            return Upstream()  # the enclave answers (401, or a development enclave's anonymous)
        scheme, token = parse_authorization(value)
        if scheme == "Bearer" and looks_like_api_key(token):
            return self._for_api_key(token, method, path)
        proof = _one(headers, "dpop")
        if scheme == "DPoP" and proof is not None and not _for_inner(proof, path):
            return self._for_app_dpop(token, proof, method, url, path)
        return Upstream(f"{scheme} {token}", proof)

    def _sign(self, token: AccessToken, method: str, path: str) -> Upstream:
        assert self._credentials is not None
        return Upstream(token.authorization(), self._credentials.proof(token, method, path))

    def _for_header(self, user: str, peer: str | None, method: str, path: str) -> Upstream:
        if not peer_is_trusted(peer, self._trusted):
            # Anyone can write the header; only the hospital's SSO proxy is believed.
            raise AuthError("auth.invalid_credentials",
                            f"the {self._header} header came from an untrusted address")
        if not is_valid_name(user):
            raise AuthError("auth.invalid_credentials", f"the {self._header} header names no "
                            "valid user")
        assert self._credentials is not None
        return self._sign(self._credentials.user_token(user, self._header_roles), method, path)

    def _for_api_key(self, key: str, method: str, path: str) -> Upstream:
        record = self._keys.lookup(key) if self._keys is not None else None
        if record is None or self._credentials is None:
            raise AuthError("auth.invalid_credentials", "unknown or revoked API key")
        token = self._credentials.user_token(record.subject, record.roles)
        if record.tenant is not None and _claim(token.value, "tenant") != record.tenant:
            raise AuthError("auth.forbidden", f"the IdP's token for {record.subject!r} is not "
                            f"for tenant {record.tenant!r}")
        return self._sign(token, method, path)

    def _for_app_dpop(self, token: str, proof: str, method: str, url: str,
                      path: str) -> Upstream:
        if self._credentials is None:
            raise AuthError("auth.dpop_invalid", "a DPoP proof for this proxy's URL needs the "
                            "proxy's IdP client (it checks the proof, then exchanges the token)")
        jkt = _claim(token, "cnf")
        if not isinstance(jkt, dict) or not isinstance(jkt.get("jkt"), str):
            raise AuthError("auth.dpop_invalid", "the DPoP scheme needs a DPoP-bound token")
        now = datetime.now(UTC)
        exp = _claim(token, "exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and now.timestamp() >= exp:
            # Said here as the enclave would say it (401), not as the IdP's refusal (403).
            raise AuthError("auth.token_expired", "the app's token has expired")
        # RFC 9449 §4.3 / §7.1, as the resource server the app called. The token's signature
        # is the IdP's to check, in the exchange; the proof binds it to the app's key (ath, jkt).
        verify_dpop_proof(proof, method=method, url=url, now=now, access_token=token,
                          expected_jkt=jkt["jkt"], replay=self._replay)
        return self._sign(self._credentials.exchanged(token), method, path)


def _for_inner(proof: str, path: str) -> bool:
    """Whether a proof names the enclave's inner URL (made by a Medclave-aware client): such a
    proof is forwarded for the enclave to check."""
    try:
        htu = parse_compact(proof, algorithms=SUPPORTED_ALGORITHMS,
                            errors=AUTH_JOSE_ERRORS).unverified_claims().get("htu")
        return isinstance(htu, str) and normalize_htu(htu) == normalize_htu(
            f"{INNER_SCHEME}://{INNER_AUTHORITY}{path}")
    except AuthError:
        return False


def _claim(token: str, name: str) -> object:
    """A claim of a token not verified here (the IdP or the enclave verifies it)."""
    try:
        return parse_compact(token, algorithms=SUPPORTED_ALGORITHMS,
                             errors=AUTH_JOSE_ERRORS).unverified_claims().get(name)
    except AuthError as exc:
        raise AuthError("auth.token_malformed", exc.detail) from exc
