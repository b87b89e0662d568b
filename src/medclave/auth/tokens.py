"""Access-token verification: a JWT (RFC 7519) from a configured issuer, checked strictly.

Order of checks, each failure a stable ``auth.*`` code:

1. Parse under bounds; ``alg`` on the allow-list (``auth.algorithm_forbidden``); ``typ`` must not
   be another kind of JWT, e.g. a DPoP proof (RFC 8725 §3.11, explicit typing).
2. ``iss`` names a configured issuer (``auth.issuer_untrusted``); its key is looked up by ``kid``
   and must match the algorithm (``auth.key_unknown`` / ``auth.algorithm_forbidden``).
3. The signature (``auth.signature_invalid``). Nothing in the payload is trusted before this.
4. ``aud``, ``exp``, ``nbf``, ``iat`` with a bounded clock skew, lifetime ``exp - iat`` at most
   15 minutes, ``sub``, ``jti``, the tenant (which the issuer must be allowed to speak for).

An access token is a bearer credential, used for every request until it expires (RFC 6750 §1.2,
RFC 9068): its ``jti`` is NOT a one-time value and is never put in a replay cache (issue 10: a
single-use token broke every app's second request, its model listing and its SDK's retries).
What must not be replayed is protected where replay is defined: DPoP proofs (their own ``jti``,
RFC 9449 §11.1, :mod:`medclave.auth.dpop`) and encapsulated requests (the HPKE ``enc`` of each
OHTTP request, :mod:`medclave.enclave.replay`). The short lifetime bounds a stolen token's use;
DPoP binding makes it useless without the client's key.

DPoP binding (``cnf.jkt``, RFC 9449 §6) is reported in the :class:`Identity`; the
:class:`~medclave.auth.authn.Authenticator` demands the proof.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from medclave.auth.jwks import AUTH_JOSE_ERRORS, JwksProvider
from medclave.crypto.jose import SUPPORTED_ALGORITHMS, parse_compact, verify_signature
from medclave.errors import AuthError, InputError

MAX_LIFETIME: Final = timedelta(minutes=15)
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
MAX_ROLES: Final = 32
# Tenants, roles and subjects become Cedar entity ids and log fields: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z")
_ACCESS_TOKEN_TYPES: Final = frozenset({"JWT", "at+jwt", "application/at+jwt"})


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InputError("config.invalid", "verification time must be timezone-aware")
    return moment


@dataclass(frozen=True, kw_only=True)
class IssuerConfig:
    """One trusted issuer. ``tenants`` limits which tenants its tokens may name (None: any).

    An issuer that serves one hospital and emits no tenant claim gets that tenant when
    ``tenants`` has exactly one member.
    """

    issuer: str
    keys: JwksProvider
    tenants: frozenset[str] | None = None
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"


@dataclass(frozen=True, kw_only=True)
class TokenOptions:
    audiences: frozenset[str]
    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS
    max_lifetime: timedelta = MAX_LIFETIME
    clock_skew: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if not self.audiences:
            raise InputError("config.invalid", "name at least one accepted audience")
        if not self.algorithms or not self.algorithms <= SUPPORTED_ALGORITHMS:
            raise InputError("config.invalid", "algorithms must be among ES256, EdDSA, RS256")
        if not timedelta(0) < self.max_lifetime <= MAX_LIFETIME:
            raise InputError("config.invalid", "max_lifetime must be within 15 minutes")
        if not timedelta(0) <= self.clock_skew <= MAX_CLOCK_SKEW:
            raise InputError("config.invalid", "clock_skew must be within 5 minutes")


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who is calling, as established by a verified token."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    issuer: str
    audience: tuple[str, ...]
    token_id: str
    issued_at: datetime
    expires_at: datetime
    not_before: datetime | None = None
    client_id: str | None = None
    confirmation_jkt: str | None = None  # RFC 9449 §6.1: the DPoP key this token is bound to
    dpop_verified: bool = False
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sub": self.subject,
            "tenant": self.tenant,
            "roles": list(self.roles),
            "iss": self.issuer,
            "aud": list(self.audience),
            "jti": self.token_id,
            "iat": self.issued_at.isoformat(),
            "exp": self.expires_at.isoformat(),
            "nbf": self.not_before.isoformat() if self.not_before else None,
            "client_id": self.client_id,
            "cnf_jkt": self.confirmation_jkt,
            "dpop_verified": self.dpop_verified,
        }


def _numeric_date(payload: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise AuthError("auth.token_malformed", f"the token has no {name!r} claim")
        return None
    # RFC 7519 §2 NumericDate; bool is an int in Python and is refused explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError("auth.token_malformed", f"{name!r} is not a NumericDate")
    if not 0 <= value < 2**40:
        raise AuthError("auth.token_malformed", f"{name!r} is out of range")
    return datetime.fromtimestamp(value, tz=UTC)


def _short_string(payload: Mapping[str, Any], name: str, *, limit: int = 256) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise AuthError("auth.token_malformed", f"{name!r} must be a short printable string")
    return value


def _audiences(payload: Mapping[str, Any]) -> tuple[str, ...]:
    aud = payload.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and aud and len(aud) <= 16 and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise AuthError("auth.token_malformed", "'aud' must be a string or a list of strings")


class TokenVerifier:
    """Verifies access tokens from several issuers against one set of options."""

    def __init__(self, issuers: Sequence[IssuerConfig], options: TokenOptions) -> None:
        if not issuers:
            raise InputError("config.invalid", "configure at least one trusted issuer")
        self._issuers = {cfg.issuer: cfg for cfg in issuers}
        if len(self._issuers) != len(issuers):
            raise InputError("config.invalid", "an issuer is configured twice")
        self.options = options

    def verify(self, token: str, *, now: datetime) -> Identity:
        """Return the caller's identity or raise an ``auth.*`` :class:`AuthError`."""
        now = _aware(now)
        opts = self.options
        jws = parse_compact(token, algorithms=opts.algorithms, errors=AUTH_JOSE_ERRORS)
        typ = jws.header.get("typ")
        if typ is not None and typ not in _ACCESS_TOKEN_TYPES:
            raise AuthError("auth.token_malformed", f"a {str(typ)[:32]!r} is not an access token")
        for forbidden in ("jku", "x5u", "jwk", "x5c"):
            # Keys come from configuration only, never from the token (RFC 8725 §3.10).
            if forbidden in jws.header:
                raise AuthError("auth.token_malformed", f"header {forbidden!r} is not accepted")

        # The one read before the signature: which issuer's keys are to verify it (each issuer
        # has its own JWKS). Parsed strictly and bounded; nothing else in it is used until the
        # signature over these very bytes has verified.
        claims = jws.unverified_claims()
        iss = claims.get("iss")
        cfg = self._issuers.get(iss) if isinstance(iss, str) else None
        if cfg is None:
            raise AuthError("auth.issuer_untrusted", f"issuer {str(iss)[:128]!r} is not trusted")
        key = cfg.keys.key_for(jws.kid, jws.alg, now=now)
        verify_signature(jws, key)

        audience = _audiences(claims)
        if not opts.audiences.intersection(audience):
            raise AuthError("auth.audience_mismatch", f"token audience {list(audience)[:4]}")
        exp = _numeric_date(claims, "exp", required=True)
        iat = _numeric_date(claims, "iat", required=True)
        nbf = _numeric_date(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        skew = opts.clock_skew
        if now >= exp + skew:
            raise AuthError("auth.token_expired", f"expired at {exp.isoformat()}")
        if nbf is not None and now + skew < nbf:
            raise AuthError("auth.token_not_yet_valid", f"not before {nbf.isoformat()}")
        if now + skew < iat:
            raise AuthError("auth.token_not_yet_valid", f"issued in the future ({iat.isoformat()})")
        if exp <= iat:
            raise AuthError("auth.token_malformed", "'exp' is not after 'iat'")
        if exp - iat > opts.max_lifetime:
            raise AuthError(
                "auth.token_lifetime_too_long",
                f"lifetime {exp - iat} exceeds {opts.max_lifetime}",
            )
        subject = _short_string(claims, "sub")
        jti = _short_string(claims, "jti")
        tenant = self._tenant(cfg, claims)
        roles = self._roles(cfg, claims)
        jkt = self._confirmation(claims)
        client_id = claims.get("client_id", claims.get("azp"))

        return Identity(
            subject=subject,
            tenant=tenant,
            roles=roles,
            issuer=cfg.issuer,
            audience=audience,
            token_id=jti,
            issued_at=iat,
            expires_at=exp,
            not_before=nbf,
            client_id=client_id if isinstance(client_id, str) else None,
            confirmation_jkt=jkt,
            claims=dict(claims),
        )

    @staticmethod
    def _tenant(cfg: IssuerConfig, claims: Mapping[str, Any]) -> str:
        value = claims.get(cfg.tenant_claim)
        if value is None and cfg.tenants is not None and len(cfg.tenants) == 1:
            (value,) = cfg.tenants
        if not isinstance(value, str) or not _NAME.match(value):
            raise AuthError("auth.token_malformed", "the token names no valid tenant")
        if cfg.tenants is not None and value not in cfg.tenants:
            raise AuthError("auth.issuer_untrusted", f"{cfg.issuer} may not speak for tenant {value!r}")
        return value

    @staticmethod
    def _roles(cfg: IssuerConfig, claims: Mapping[str, Any]) -> tuple[str, ...]:
        value = claims.get(cfg.roles_claim, [])
        if not isinstance(value, list) or len(value) > MAX_ROLES:
            raise AuthError("auth.token_malformed", "'roles' must be a short list of names")
        if not all(isinstance(r, str) and _NAME.match(r) for r in value):
            raise AuthError("auth.token_malformed", "a role name is invalid")
        return tuple(dict.fromkeys(value))

    @staticmethod
    def _confirmation(claims: Mapping[str, Any]) -> str | None:
        cnf = claims.get("cnf")
        if cnf is None:
            return None
        if not isinstance(cnf, Mapping) or set(cnf) != {"jkt"}:
            # mTLS (x5t#S256) or other methods are not supported: refuse rather than ignore.
            raise AuthError("auth.token_malformed", "unsupported confirmation ('cnf') method")
        jkt = cnf["jkt"]
        if not isinstance(jkt, str) or len(jkt) != 43:
            raise AuthError("auth.token_malformed", "'cnf.jkt' is not a SHA-256 thumbprint")
        return jkt


def is_valid_name(value: str) -> bool:
    """Tenant, role and subject names the rest of Medclave accepts."""
    return bool(_NAME.match(value))
