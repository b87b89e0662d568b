"""OAuth 2.0 Token Exchange (RFC 8693) in the dev IdP: the hospital's proxy gets per-user tokens.

The proxy authenticates apps locally (API keys, or its SSO's identity header) and asks the IdP
for a short-lived token for that user. The rules, each refusal a stable code:

* Only a client registered with ``act_for_users`` may exchange (``auth.exchange_forbidden``,
  OAuth ``unauthorized_client``); it authenticates as for the client-credentials grant.
* ``subject_token`` (RFC 8693 §2.1, type ``access_token`` or ``jwt``) must be a token this IdP
  issued, still valid (``auth.exchange_subject_invalid``, OAuth ``invalid_request``, §2.2.2):
  - the client's own token, with ``requested_subject`` naming the user (Keycloak's name for the
    parameter; RFC 8693 leaves impersonation by a trusted client to profiles). The client has
    authenticated that user itself (an API key it issued, its SSO's header);
  - or a user's token (an app's own, e.g. DPoP-bound to the app's key, whose proof the proxy
    checked): the new token is for the same user, expires no later, and carries no more roles.
  ``actor_token`` and other token types are refused, never ignored.
* The user must be in the directory and in the client's tenant (``auth.exchange_forbidden``).
* ``scope`` (space-separated roles, RFC 8693 §2.1) must be within the user's directory roles
  (``auth.scope_exceeded``, OAuth ``invalid_scope``); without it, the user's directory roles.
* The token lives at most the issuer's lifetime, never over 15 minutes
  (:data:`~medclave.auth.tokens.MAX_LIFETIME`), and names the client in ``act`` (§4.1).

A DPoP proof on the exchange request binds the new token to the client's key (RFC 9449 §5), as
for the other grants.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from medclave.auth.tokens import TokenVerifier, is_valid_name
from medclave.errors import AuthError, InputError

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
MAX_SCOPE_ROLES: Final = 32


@dataclass(frozen=True, kw_only=True)
class Exchanged:
    """Who the new token is for, and its limits."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    actor: str
    not_after: datetime | None  # the subject token's expiry when it was the user's own


class Party(Protocol):
    """A directory entry (:class:`~medclave.auth.issuer.Account`): the client or the user."""

    @property
    def name(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def roles(self) -> tuple[str, ...]: ...

    @property
    def act_for_users(self) -> bool: ...


def _roles(scope: str | None) -> tuple[str, ...] | None:
    if scope is None:
        return None
    roles = tuple(dict.fromkeys(scope.split()))
    if not roles or len(roles) > MAX_SCOPE_ROLES or not all(is_valid_name(r) for r in roles):
        raise InputError("input.malformed", "scope must be a short list of role names")
    return roles


def exchange(form: Mapping[str, str], *, client: Party, verifier: TokenVerifier,
             user: Callable[[str], Party | None], now: datetime) -> Exchanged:
    """Check one exchange request of an authenticated ``client``; raise on any rule broken.
    ``user(name)`` looks a user up in the directory; ``verifier`` checks this IdP's tokens."""
    client_name, client_tenant = client.name, client.tenant
    if not client.act_for_users:
        raise AuthError("auth.exchange_forbidden", f"client {client_name!r} may not act for users")
    for unsupported in ("actor_token", "actor_token_type"):
        if unsupported in form:
            raise InputError("input.malformed", f"{unsupported} is not supported here")
    if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
        raise InputError("input.malformed", "only access tokens are issued")
    token, kind = form.get("subject_token"), form.get("subject_token_type")
    if not token or kind not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
        raise InputError("input.malformed", "subject_token and an access_token or jwt "
                         "subject_token_type are required")
    try:
        presented = verifier.verify(token, now=now)
    except AuthError as exc:
        raise AuthError("auth.exchange_subject_invalid", f"subject_token: {exc.detail}") from exc
    requested = form.get("requested_subject")
    own = presented.subject == client_name and presented.client_id == client_name
    if own:
        # The client's own token: it names the user it authenticated.
        if not requested:
            raise AuthError("auth.exchange_subject_invalid",
                            "name the user in requested_subject")
        name, ceiling, not_after = requested, None, None
    else:
        # A user's token: re-issued for that user, never for someone else, never for longer.
        if presented.client_id is not None and presented.subject == presented.client_id:
            raise AuthError("auth.exchange_subject_invalid",
                            "another client's token names no user")
        if requested and requested != presented.subject:
            raise AuthError("auth.exchange_subject_invalid",
                            "requested_subject differs from the subject token's")
        name, ceiling, not_after = presented.subject, presented.roles, presented.expires_at
        if not_after - now < timedelta(seconds=1):
            raise AuthError("auth.exchange_subject_invalid", "the subject token is expiring")
    entry = user(name) if is_valid_name(name) else None
    if entry is None:
        raise AuthError("auth.exchange_subject_invalid", f"no user {name[:64]!r} in the directory")
    tenant, granted = entry.tenant, entry.roles
    if tenant != client_tenant:
        raise AuthError("auth.exchange_forbidden",
                        f"client {client_name!r} acts only for users of tenant {client_tenant!r}")
    if ceiling is not None:
        granted = tuple(r for r in granted if r in ceiling)
    wanted = _roles(form.get("scope"))
    if wanted is None:
        wanted = granted
    extra = [r for r in wanted if r not in granted]
    if extra:
        raise AuthError("auth.scope_exceeded", f"roles {extra[:8]} are not granted to {name!r}")
    return Exchanged(subject=name, tenant=tenant, roles=wanted, actor=client_name,
                     not_after=not_after)
