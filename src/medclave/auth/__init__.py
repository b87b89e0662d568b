"""Identity and authorization: verified short-lived tokens in, Cedar decisions out.

Library core (no web framework): :mod:`medclave.crypto.jose` (the strict JWS/JWK implementation,
shared with attestation results), :mod:`.jwks` (key providers and the ``auth.*`` JOSE codes),
:mod:`.tokens` (access-token checks), :mod:`.dpop` (RFC 9449), :mod:`.authn` (headers to an
:class:`Identity`), :mod:`.entities` and :mod:`.consent` (Cedar entities, FHIR Consent),
:mod:`.authorizer` (Cedar decisions), :mod:`.breakglass` (emergency grants), :mod:`.issuer`
(the dev IdP's logic). :mod:`.idp_server` is the dev IdP's HTTP face (FastAPI).
"""

from medclave.auth.authn import Authenticator, parse_authorization, require_identity
from medclave.auth.authorizer import (
    Authorizer,
    Decision,
    DecisionRecord,
    PolicyBundle,
    load_policies,
)
from medclave.auth.breakglass import BreakGlass, BreakGlassEvent, Grant
from medclave.auth.consent import consent_from_fhir
from medclave.auth.dpop import DpopOptions, create_dpop_proof, verify_dpop_proof
from medclave.auth.entities import (
    CareTeam,
    Consent,
    Document,
    EntityStore,
    EntityUid,
    Model,
    Patient,
    Tenant,
    User,
)
from medclave.auth.jwks import HttpJwks, StaticJwks
from medclave.auth.replay import MemoryReplayCache, ReplayCache, SqliteReplayCache
from medclave.auth.tokens import Identity, IssuerConfig, TokenOptions, TokenVerifier
from medclave.util.clock import system_clock

__all__ = [
    "Authenticator",
    "Authorizer",
    "BreakGlass",
    "BreakGlassEvent",
    "CareTeam",
    "Consent",
    "Decision",
    "DecisionRecord",
    "Document",
    "DpopOptions",
    "EntityStore",
    "EntityUid",
    "Grant",
    "HttpJwks",
    "Identity",
    "IssuerConfig",
    "MemoryReplayCache",
    "Model",
    "Patient",
    "PolicyBundle",
    "ReplayCache",
    "SqliteReplayCache",
    "StaticJwks",
    "Tenant",
    "TokenOptions",
    "TokenVerifier",
    "User",
    "consent_from_fhir",
    "create_dpop_proof",
    "load_policies",
    "parse_authorization",
    "require_identity",
    "system_clock",
    "verify_dpop_proof",
]
