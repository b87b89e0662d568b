"""The two doors every inference passes: authorization before the engine, audit after it.

:class:`AuthorizationHook` is called with the decapsulated request (its headers, method and
path) before anything reaches the engine; it returns the :class:`Principal` or raises
:class:`~medclave.errors.AuthError`, which the enclave answers with an encapsulated 401/403.
:class:`TokenAuthorization` is the real one: the identity issue's token verification
(:mod:`medclave.auth.authn`) and Cedar decision (:mod:`medclave.auth.authorizer`).

:class:`AuditSink` records each inference (commitments only, never PHI) and returns a receipt
that travels back inside the encrypted response. :class:`AuditLogSink` is the real one, over
:class:`medclave.audit.AuditLog`, signed by the Ed25519 key bound into the attestation.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from medclave.audit import AuditEntry, AuditLog, commit, pseudonym
from medclave.audit.entry import AttestationSummary, Authorization, Params, format_time, new_salt
from medclave.auth.authn import Authenticator
from medclave.auth.authorizer import Authorizer
from medclave.auth.entities import Model
from medclave.enclave.engines.base import SamplingParams
from medclave.errors import AuthError
from medclave.protocol.inference import INNER_AUTHORITY, MODELS_PATH, InnerRequest

log = logging.getLogger("medclave.enclave")

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant: str
    roles: tuple[str, ...]
    reason: str  # the policy id that allowed the request


class AuthorizationHook(Protocol):
    @property
    def policy_digest(self) -> str | None: ...

    def authorize(self, request: InnerRequest) -> Principal:
        """The caller, allowed to make ``request``; raises ``AuthError`` otherwise."""
        ...


class InsecureNoAuthorization:
    """Development only: every request is an anonymous caller. Announced at boot."""

    policy_digest: str | None = None

    def authorize(self, request: InnerRequest) -> Principal:
        return Principal("anonymous", "default", (), "insecure-no-auth")


class TokenAuthorization:
    """A verified token, its tenant served here, and Cedar's ``infer`` on this model."""

    def __init__(self, authenticator: Authenticator, authorizer: Authorizer, *, model_id: str,
                 roles: tuple[str, ...], tenants: frozenset[str], clock: Clock) -> None:
        self._authn = authenticator
        self._authz = authorizer
        self._model_id = model_id
        self._roles = roles
        self._tenants = tenants
        self._clock = clock

    @property
    def policy_digest(self) -> str | None:
        return self._authz.policies.digest

    def authorize(self, request: InnerRequest) -> Principal:
        now = self._clock()
        identity = self._authn.require_identity(
            request.header_map(), method=request.method,
            url=f"https://{INNER_AUTHORITY}{request.path}", now=now)
        if self._tenants and identity.tenant not in self._tenants:
            raise AuthError("auth.forbidden", f"tenant {identity.tenant!r} is not served here")
        if request.path == MODELS_PATH:
            return Principal(identity.subject, identity.tenant, identity.roles, "authenticated")
        # The model as deployed for the caller's tenant; Cedar's tenant isolation and
        # role rules (policies/models.cedar) decide.
        model = Model(id=self._model_id, tenant=identity.tenant, allowed_roles=self._roles)
        decision = self._authz.decide(identity, "infer", model, now=now)
        decision.require()
        reason = decision.reasons[0] if decision.reasons else "allow"
        return Principal(identity.subject, identity.tenant, identity.roles, reason)


# --- audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceRecord:
    """One inference, in memory only: the sink turns the content into commitments."""

    request_id: str
    time: datetime
    principal: Principal
    prompt: bytes
    answer: str | None
    params: SamplingParams


class AuditSink(Protocol):
    def record(self, record: InferenceRecord) -> bytes | None:
        """Append the record; the receipt (JSON) to hand back to the client, if any."""
        ...


class NoAudit:
    def record(self, record: InferenceRecord) -> bytes | None:
        return None


class CommitKeys(Protocol):
    def key_for(self, tenant: str) -> bytes: ...


class EphemeralCommitKeys:
    """A random commitment key per tenant, held only in this enclave's memory.

    Commitments then still hide the content and bind the log, but nobody can open them after
    the enclave stops; give the enclave the tenants' keys (``FetchedCommitKeys``) to allow
    replay by the hospital.
    """

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def key_for(self, tenant: str) -> bytes:
        with self._lock:
            return self._keys.setdefault(tenant, os.urandom(32))


class FetchedCommitKeys:
    """Tenant keys from a fetcher (the key broker), cached for the enclave's life."""

    def __init__(self, fetch: Callable[[str], bytes]) -> None:
        self._fetch = fetch
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def key_for(self, tenant: str) -> bytes:
        with self._lock:
            if tenant not in self._keys:
                self._keys[tenant] = self._fetch(tenant)
            return self._keys[tenant]


@dataclass(frozen=True)
class EnclaveFacts:
    """What every entry states about the enclave that served it."""

    model_digest: str
    engine_build: str
    evidence_digest: str
    platform: str
    secure: bool
    policy_digest: str | None


class AuditLogSink:
    def __init__(self, audit_log: AuditLog, facts: EnclaveFacts, keys: CommitKeys) -> None:
        self._log = audit_log
        self._facts = facts
        self._keys = keys

    def record(self, record: InferenceRecord) -> bytes:
        key = self._keys.key_for(record.principal.tenant)
        salt = new_salt()
        facts = self._facts
        params = record.params
        entry = AuditEntry(
            time=format_time(record.time),
            request_id=record.request_id,
            tenant=record.principal.tenant,
            user=pseudonym(key, "user", record.principal.subject),
            action="infer",
            model_digest=facts.model_digest,
            engine_build=facts.engine_build,
            evidence_digest=facts.evidence_digest,
            attestation=AttestationSummary(
                platform=facts.platform,
                status="affirming" if facts.secure else "contraindicated",
                secure=facts.secure,
                policy_digest=facts.policy_digest,
            ),
            params=Params(temperature=float(params.temperature), top_p=float(params.top_p),
                          max_tokens=params.max_tokens, seed=params.seed),
            salt=salt,
            prompt=commit(key, "prompt", salt, record.prompt),
            answer=None if record.answer is None else commit(key, "answer", salt,
                                                             record.answer.encode()),
            authorization=Authorization(decision="allow", reason=_code(record.principal.reason)),
        )
        index = self._log.append(entry)
        return self._log.receipt(index).to_json()


def _code(reason: str) -> str:
    """A policy id as an entry ``Code`` (lower-case token); anything else becomes 'allow'."""
    text = reason.lower()
    ok = text[:1].isalnum() and all(c.isalnum() or c in "._:/-" for c in text) and len(text) < 128
    return text if ok else "allow"
