"""Authentication at an enforcement point: headers in, a verified :class:`Identity` out.

Framework-free on purpose: the enclave server, the broker and the proxy call
:meth:`Authenticator.require_identity` with the request's headers, method and URL, whatever web
framework they run on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Final

from medclave.auth.dpop import DpopOptions, verify_dpop_proof
from medclave.auth.replay import MemoryReplayCache, ReplayCache
from medclave.auth.tokens import Identity, IssuerConfig, TokenOptions, TokenVerifier
from medclave.errors import AuthError
from medclave.util.clock import Clock

MAX_AUTHORIZATION_HEADER: Final = 8192 + 16


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup (RFC 9110 §5.1)."""
    wanted = name.lower()
    found = [v for k, v in headers.items() if k.lower() == wanted]
    if len(found) > 1:
        raise AuthError("auth.token_malformed", f"more than one {name} header")
    return found[0] if found else None


def parse_authorization(value: str | None) -> tuple[str, str]:
    """``Bearer`` (RFC 6750 §2.1) or ``DPoP`` (RFC 9449 §7.1) credentials: (scheme, token)."""
    if value is None or not value.strip():
        raise AuthError("auth.token_missing", "no Authorization header")
    if len(value) > MAX_AUTHORIZATION_HEADER:
        raise AuthError("auth.token_malformed", "the Authorization header is too long")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    canonical = {"bearer": "Bearer", "dpop": "DPoP"}.get(scheme.lower())
    if canonical is None:
        raise AuthError("auth.token_missing", "the Authorization scheme is not Bearer or DPoP")
    if not token or " " in token:
        raise AuthError("auth.token_malformed", "the Authorization header holds no single token")
    return canonical, token


class Authenticator:
    """Token verification plus DPoP for one service.

    ``require_dpop`` refuses tokens that are not sender-constrained. Tokens bound with
    ``cnf.jkt`` always need a valid proof, whatever this setting.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        options: TokenOptions,
        *,
        clock: Clock,
        replay: ReplayCache | None = None,
        dpop: DpopOptions = DpopOptions(),  # noqa: B008 - frozen, immutable default
        require_dpop: bool = False,
    ) -> None:
        # DPoP proofs' jti only (RFC 9449 §11.1): access tokens are reused until they expire.
        self._replay: ReplayCache = replay if replay is not None else MemoryReplayCache()
        self._tokens = TokenVerifier(issuers, options)
        self._clock = clock
        self._dpop = dpop
        self._require_dpop = require_dpop

    def authenticate(
        self,
        token: str,
        *,
        method: str | None = None,
        url: str | None = None,
        dpop: str | None = None,
        scheme: str | None = None,
        now: datetime | None = None,
    ) -> Identity:
        """Verify ``token`` (and its DPoP proof when it is bound); raise ``auth.*`` otherwise.

        ``scheme`` is the Authorization scheme it arrived under, when known: a bound token sent
        as ``Bearer``, or an unbound one sent as ``DPoP``, is refused (RFC 9449 §7.1).
        """
        at = now if now is not None else self._clock()
        identity = self._tokens.verify(token, now=at)
        jkt = identity.confirmation_jkt
        if jkt is None:
            if self._require_dpop:
                raise AuthError("auth.dpop_invalid", "this service requires DPoP-bound tokens")
            if scheme == "DPoP":
                raise AuthError("auth.dpop_invalid", "the DPoP scheme needs a DPoP-bound token")
            return identity
        if scheme == "Bearer":
            raise AuthError("auth.dpop_invalid", "a DPoP-bound token was sent as a Bearer token")
        if dpop is None:
            raise AuthError("auth.dpop_invalid", "the token is DPoP-bound but no proof was sent")
        if method is None or url is None:
            raise AuthError("auth.dpop_invalid", "the request method and URL are needed for DPoP")
        verify_dpop_proof(
            dpop,
            method=method,
            url=url,
            now=at,
            access_token=token,
            expected_jkt=jkt,
            replay=self._replay,
            options=self._dpop,
        )
        return replace(identity, dpop_verified=True)

    def require_identity(
        self,
        headers: Mapping[str, str],
        *,
        method: str | None = None,
        url: str | None = None,
        now: datetime | None = None,
    ) -> Identity:
        """The identity behind a request's headers (``Authorization`` and ``DPoP``)."""
        scheme, token = parse_authorization(_header(headers, "authorization"))
        return self.authenticate(
            token,
            method=method,
            url=url,
            dpop=_header(headers, "dpop"),
            scheme=scheme,
            now=now,
        )


def require_identity(
    headers: Mapping[str, str],
    *,
    authenticator: Authenticator,
    method: str | None = None,
    url: str | None = None,
) -> Identity:
    """Function form of :meth:`Authenticator.require_identity` for servers that prefer one."""
    return authenticator.require_identity(headers, method=method, url=url)
