"""Coarse admission at the hospital's proxy: who may send anything to the enclave at all.

Issue 6 names three enforcement points: inside the enclave (authoritative), the broker's owner
API, and the proxy's admission (coarse). This is the third. Before the proxy attests or encrypts
anything, it checks the app's token (signature, ``iss``, ``aud``, ``exp``/``nbf``/``iat``, with
the same :class:`~medclave.auth.authn.Authenticator` the enclave uses) and Cedar's ``infer`` on
the requested model (tenant isolation, role allowed to call it: ``policies/models.cedar``,
``policies/tenancy.cedar``). A refused request never leaves the hospital.

Access tokens are bearer credentials reused until they expire (RFC 6750), so checking one here
takes nothing from the enclave's own check of the same token inside the encapsulation. A DPoP
proof is checked against the enclave's inner URL (the one the enclave checks it against too), in
the proxy's own replay cache, separate from the enclave's. Admission is a filter that saves the
enclave work and keeps obviously unauthorized traffic inside the hospital; it is never the
decision that protects data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from medclave.auth.authn import Authenticator
from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.auth.entities import Model
from medclave.auth.jwks import HttpJwks, JwksProvider, StaticJwks
from medclave.auth.replay import MemoryReplayCache, ReplayCache
from medclave.auth.tokens import Identity, IssuerConfig, TokenOptions, is_valid_name
from medclave.crypto.canonical import load_json
from medclave.errors import AuthError, InputError
from medclave.protocol.inference import INNER_AUTHORITY, RECORDS_PATH, is_models_path
from medclave.util.clock import Clock

log = logging.getLogger("medclave.proxy.admission")

MAX_MODEL_ID = 128
UNNAMED_MODEL = "unspecified"  # a body without a usable "model": the enclave answers it


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """What the proxy admits. ``tenant`` None: the token's own tenant (roles still apply)."""

    issuer: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    audience: str = "medclave"
    tenant: str | None = None
    roles: tuple[str, ...] = ("clinician",)
    policies_dir: Path | None = None

    def __post_init__(self) -> None:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise InputError("config.invalid", "admission needs exactly one of a JWKS file or URL")
        if self.tenant is not None and not is_valid_name(self.tenant):
            raise InputError("config.invalid", f"tenant {self.tenant[:64]!r} is not a plain name")
        if not self.roles or not all(is_valid_name(r) for r in self.roles):
            raise InputError("config.invalid", "name at least one role allowed to call the model")


def requested_model(body: bytes) -> str:
    """The ``model`` an OpenAI request body names, as a Cedar entity id (bounded, printable)."""
    try:
        value = load_json(body)
    except InputError:  # not JSON, or nested too deep to parse: the enclave refuses it
        return UNNAMED_MODEL
    model = value.get("model") if isinstance(value, dict) else None
    if isinstance(model, str) and 0 < len(model) <= MAX_MODEL_ID and model.isprintable():
        return model
    return UNNAMED_MODEL


def _log_decision(record: DecisionRecord) -> None:
    log.info("admission %s %s %s -> %s %s", record.principal, record.action, record.resource,
             record.decision, list(record.reasons) + list(record.errors))


class ProxyAdmission:
    """``admit(headers, method=..., path=..., body=...)``: the caller's identity, or an
    ``auth.*`` :class:`~medclave.errors.AuthError` (401 for the token, 403 for the policy)."""

    def __init__(self, authenticator: Authenticator, authorizer: Authorizer, *,
                 tenant: str | None, roles: tuple[str, ...], clock: Clock,
                 on_close: Callable[[], None] | None = None) -> None:
        self._authn = authenticator
        self._on_close = on_close
        self._authz = authorizer
        self._tenant = tenant
        self._roles = roles
        self._clock = clock

    def admit(self, headers: Mapping[str, str], *, method: str, path: str,
              body: bytes = b"") -> Identity:
        now = self._clock()
        # The URL the enclave checks a DPoP proof against, so that one proof fits both checks.
        identity = self._authn.require_identity(headers, method=method,
                                                url=f"https://{INNER_AUTHORITY}{path}", now=now)
        if is_models_path(path) or path == RECORDS_PATH:
            # Listing models is no inference: a token of this proxy's tenant is enough. Writing
            # records is no inference either; the enclave decides it (Cedar admin on the tenant).
            if self._tenant is not None and identity.tenant != self._tenant:
                raise AuthError("auth.forbidden", f"tenant {identity.tenant!r} is not served here")
            return identity
        # The model as this hospital deploys it: Cedar's tenant isolation compares the caller's
        # tenant with the model's, and models.cedar the caller's roles with the allowed ones.
        model = Model(id=requested_model(body), tenant=self._tenant or identity.tenant,
                      allowed_roles=self._roles)
        self._authz.decide(identity, "infer", model, now=now).require()
        return identity

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


def build_admission(config: AdmissionConfig, *, clock: Clock,
                    replay: ReplayCache | None = None) -> ProxyAdmission:
    """The proxy's admission from its configuration; ``config.invalid`` if it is unusable."""
    keys: JwksProvider
    on_close: Callable[[], None] | None = None
    if config.jwks_file is not None:
        keys = StaticJwks.from_file(config.jwks_file)
    else:
        fetched = HttpJwks(jwks_uri=config.jwks_url)  # https, or http to loopback only
        keys, on_close = fetched, fetched.close
    # No tenant restriction on the issuer here: a token for another tenant is then refused by
    # Cedar's tenant isolation with 403 (the enclave restricts the issuer itself).
    issuer = IssuerConfig(issuer=config.issuer, keys=keys)
    options = TokenOptions(audiences=frozenset({config.audience}))
    authenticator = Authenticator([issuer], options, clock=clock,
                                  replay=replay if replay is not None else MemoryReplayCache())
    authorizer = Authorizer(config.policies_dir, clock=clock, sink=_log_decision)
    return ProxyAdmission(authenticator, authorizer, tenant=config.tenant, roles=config.roles,
                          clock=clock, on_close=on_close)
