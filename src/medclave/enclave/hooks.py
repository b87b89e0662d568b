"""The two doors every inference passes: authorization before the engine, audit after it.

:class:`AuthorizationHook` is called with the decapsulated request (its headers, method and
path) before anything reaches the engine; it returns the :class:`Principal` or raises
:class:`~medclave.errors.AuthError`, which the enclave answers with an encapsulated 401/403.
:class:`TokenAuthorization` is the real one: the identity issue's token verification
(:mod:`medclave.auth.authn`) and Cedar decision (:mod:`medclave.auth.authorizer`). A Cedar
refusal of a verified caller is :class:`Refused`, which the enclave records before answering.

:class:`AuditSink` records each inference (commitments only, never PHI) and returns a receipt
that travels back inside the encrypted response; it records refusals too (no receipt: a refused
caller gets nothing but the refusal). :class:`AuditLogSink` is the real one, over
:class:`medclave.audit.AuditLog`, signed by the Ed25519 key bound into the attestation, with
commitments under the tenant's own key (:mod:`medclave.enclave.commitkeys`).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from medclave.audit import AuditEntry, AuditLog, commit, pseudonym
from medclave.audit.entry import (
    AttestationSummary,
    Authorization,
    Ending,
    Params,
    format_time,
    new_salt,
)
from medclave.auth.authn import Authenticator
from medclave.auth.authorizer import Authorizer, DecisionRecord
from medclave.auth.entities import Model, Tenant
from medclave.enclave.commitkeys import CommitKeys
from medclave.enclave.engines.base import SamplingParams
from medclave.errors import AuthError, MedclaveError
from medclave.protocol.inference import (
    INNER_AUTHORITY,
    RECORDS_PATH,
    InnerRequest,
    is_models_path,
)
from medclave.util.clock import Clock

log = logging.getLogger("medclave.enclave")

MAX_POLICIES = 64


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant: str
    roles: tuple[str, ...]
    reason: str  # the policy id that allowed (or refused) the request
    policies: tuple[str, ...] = ()  # every policy id the request's decisions cited
    break_glass: bool = False  # a break-glass grant decided it
    # The caller's FHIR identity (SMART's ``fhirUser`` claim: Patient/ID or a Practitioner
    # reference), which records retrieval links to care relationships; None without one.
    fhir_user: str | None = None


class Refused(AuthError):
    """Policy refused a verified caller: recorded in the audit log, answered ``auth.forbidden``.

    (Callers whose token does not verify never get this far: there is no identity to record.)
    """

    def __init__(self, code: str = "auth.forbidden", detail: str | None = None, *,
                 principal: Principal | None = None, **context: Any) -> None:
        # The base class's signature: code that rebuilds errors from a code alone (clients
        # walking the hierarchy) must still be able to construct this one.
        super().__init__(code, detail, **context)
        self.principal = principal


class AuthorizationHook(Protocol):
    @property
    def policy_digest(self) -> str | None: ...

    @property
    def token_issuers(self) -> tuple[dict[str, str], ...]:
        """Whose tokens the door accepts ({"issuer", "jwks"}), as the runtime states it."""
        ...

    def authorize(self, request: InnerRequest) -> Principal:
        """The caller, allowed to make ``request``; raises ``AuthError`` otherwise."""
        ...


class InsecureNoAuthorization:
    """Development only: every request is an anonymous caller. Announced at boot."""

    policy_digest: str | None = None
    token_issuers: tuple[dict[str, str], ...] = ()  # it checks no token

    def authorize(self, request: InnerRequest) -> Principal:
        return Principal("anonymous", "default", (), "insecure-no-auth")


class DecisionTrail:
    """The Cedar :class:`Authorizer`'s decision sink inside the enclave.

    Issue 6: every decision, with its policy ids, goes to the audit log. The enclave writes one
    entry per request, so the trail gathers the :class:`DecisionRecord` s made while a request
    is being authorized (:meth:`collect`) and they become that entry's ``authorization``. A
    decision made outside any request would have no entry to go to: it is refused, which makes
    the decision itself fail (closed).
    """

    def __init__(self) -> None:
        self._bucket: contextvars.ContextVar[list[DecisionRecord] | None] = (
            contextvars.ContextVar("medclave_decisions", default=None))

    def __call__(self, record: DecisionRecord) -> None:
        bucket = self._bucket.get()
        if bucket is None:
            raise MedclaveError("internal", "an authorization decision outside a request "
                                "cannot be audited")
        bucket.append(record)

    @contextmanager
    def collect(self) -> Iterator[list[DecisionRecord]]:
        bucket: list[DecisionRecord] = []
        token = self._bucket.set(bucket)
        try:
            yield bucket
        finally:
            self._bucket.reset(token)


class TokenAuthorization:
    """A verified token, its tenant served here, and Cedar's ``infer`` on this model.

    ``authorizer`` must send its decisions to ``trail`` (``Authorizer(sink=trail)``): the
    principal's policies are read from what the trail received, and no record means no access.
    """

    def __init__(self, authenticator: Authenticator, authorizer: Authorizer, *, model_id: str,
                 roles: tuple[str, ...], tenants: frozenset[str], clock: Clock,
                 trail: DecisionTrail, token_issuers: tuple[dict[str, str], ...] = (),
                 fhir_users: Mapping[str, str] | None = None) -> None:
        self._authn = authenticator
        self._links = dict(fhir_users or {})
        self.token_issuers = token_issuers
        self._authz = authorizer
        self._model_id = model_id
        self._roles = roles
        self._tenants = tenants
        self._clock = clock
        self._trail = trail

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
        if is_models_path(request.path):
            return Principal(identity.subject, identity.tenant, identity.roles, "authenticated")
        # The model as deployed for the caller's tenant; Cedar's tenant isolation and
        # role rules (policies/models.cedar) decide. Writing records is administration of
        # the tenant (policies/admin.cedar), not inference.
        resource: Model | Tenant = Model(id=self._model_id, tenant=identity.tenant,
                                         allowed_roles=self._roles)
        action = "infer"
        if request.path == RECORDS_PATH:
            resource, action = Tenant(id=identity.tenant), "admin"
        with self._trail.collect() as records:
            decision = self._authz.decide(identity, action, resource, now=now)
        if not records or records[-1].decision != decision.decision:
            raise MedclaveError("internal", "the authorizer's decision did not reach the audit "
                                "trail")
        enforced = records[-1]
        fhir_user = identity.claims.get("fhirUser") or self._links.get(identity.subject)
        principal = Principal(identity.subject, identity.tenant, identity.roles,
                              _reason(enforced), _policies(records),
                              any(r.break_glass_grant and r.decision == "allow" for r in records),
                              fhir_user=fhir_user if isinstance(fhir_user, str) else None)
        if not decision.allowed:
            raise Refused(detail=f"denied by {list(decision.reasons) or 'default deny'}",
                          principal=principal)
        return principal


def _reason(record: DecisionRecord) -> str:
    """The entry's one-word reason: the first policy that decided, else why none did."""
    if record.reasons:
        return policy_code(record.reasons[0])
    if record.errors:
        return "policy-evaluation-error"  # fail closed: an error may have skipped a forbid
    return "allow" if record.decision == "allow" else "default-deny"


def _policies(records: Sequence[DecisionRecord]) -> tuple[str, ...]:
    return tuple(sorted({policy_code(r) for rec in records for r in rec.reasons}))[:MAX_POLICIES]


def policy_code(policy_id: str) -> str:
    """A policy id as an entry ``Code`` (lower-case token). An id outside that alphabet is a
    hospital's own free text: it is replaced by its digest rather than written to the log."""
    text = policy_id.lower()
    ok = text[:1].isalnum() and all(c.isalnum() or c in "._:/-" for c in text) and len(text) < 128
    ok = ok and text.isascii()
    return text if ok else f"policy-sha256:{hashlib.sha256(policy_id.encode()).hexdigest()[:32]}"


# --- audit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceRecord:
    """One inference, in memory only: the sink turns the content into commitments.

    ``answer`` is the text that left the enclave, whole or in part (None: the engine failed
    before producing any); ``ended`` says how generation stopped and ``completion_tokens`` how
    many tokens of the answer left (issue 9 §2: every answer is recorded, however it ends).
    """

    request_id: str
    time: datetime
    principal: Principal
    prompt: bytes
    answer: str | None
    params: SamplingParams
    ended: Ending
    completion_tokens: int
    # Other inner routes (medclave.enclave.routes, the records routes): the entry's action
    # (infer, retrieve, ingest, embed, transcribe, scribe), documents committed under the
    # ``document`` label (for retrieval: why each chunk that reached the model was allowed,
    # never its text), and the patient the request concerns (pseudonymised).
    action: str = "infer"
    documents: tuple[bytes, ...] = ()
    patient: str | None = None


class AuditSink(Protocol):
    def check(self, tenant: str) -> None:
        """Raise unless an inference for ``tenant`` can be recorded (before the engine runs)."""
        ...

    def record(self, record: InferenceRecord) -> bytes | None:
        """Append the record; the receipt (JSON) to hand back to the client, if any."""
        ...

    def record_refusal(self, request_id: str, time: datetime, principal: Principal) -> None:
        """Append a refused request: who (pseudonymous), when, the policies; no content."""
        ...


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

    @property
    def audit_log(self) -> AuditLog:
        return self._log

    def check(self, tenant: str) -> None:
        self._keys.key_for(tenant)

    def _attestation(self) -> AttestationSummary:
        facts = self._facts
        return AttestationSummary(
            platform=facts.platform,
            status="affirming" if facts.secure else "contraindicated",
            secure=facts.secure,
            policy_digest=facts.policy_digest,
        )

    def record(self, record: InferenceRecord) -> bytes:
        principal = record.principal
        tenant_key = self._keys.key_for(principal.tenant)
        key = tenant_key.key
        salt = new_salt()
        params = record.params
        entry = AuditEntry(
            time=format_time(record.time),
            request_id=record.request_id,
            tenant=principal.tenant,
            user=pseudonym(key, "user", principal.subject),
            patient=None if record.patient is None else pseudonym(key, "patient",
                                                                   record.patient),
            action=record.action,
            model_digest=self._facts.model_digest,
            engine_build=self._facts.engine_build,
            evidence_digest=self._facts.evidence_digest,
            attestation=self._attestation(),
            documents=tuple(commit(key, "document", salt, d) for d in record.documents),
            params=Params(temperature=float(params.temperature), top_p=float(params.top_p),
                          max_tokens=params.max_tokens, seed=params.seed),
            salt=salt,
            prompt=commit(key, "prompt", salt, record.prompt),
            answer=None if record.answer is None else commit(key, "answer", salt,
                                                             record.answer.encode()),
            ended=record.ended,
            completion_tokens=record.completion_tokens,
            authorization=Authorization(decision="allow", reason=policy_code(principal.reason),
                                        policies=principal.policies),
            break_glass=principal.break_glass,
            key_version=tenant_key.version,
        )
        index = self._log.append(entry)
        return self._log.receipt(index).to_json()

    def record_refusal(self, request_id: str, time: datetime, principal: Principal) -> None:
        # No prompt, no params, no answer: the request was refused before it was parsed, and
        # what a refused caller sent is not the hospital's record to keep. The pseudonym needs
        # the tenant key; without it the refusal cannot be recorded (the caller is refused all
        # the same).
        tenant_key = self._keys.key_for(principal.tenant)
        key = tenant_key.key
        entry = AuditEntry(
            time=format_time(time),
            request_id=request_id,
            tenant=principal.tenant,
            user=pseudonym(key, "user", principal.subject),
            action="infer",
            model_digest=self._facts.model_digest,
            engine_build=self._facts.engine_build,
            evidence_digest=self._facts.evidence_digest,
            attestation=self._attestation(),
            salt=new_salt(),
            authorization=Authorization(decision="deny", reason=policy_code(principal.reason),
                                        policies=principal.policies),
            break_glass=principal.break_glass,
            key_version=tenant_key.version,
        )
        self._log.append(entry)
