"""The key broker: releases a secret only to evidence its owner's policy accepts.

Release (docs/architecture.md, "Key release"; the flow of the IETF RATS background-check model with a
broker-issued nonce): spend the nonce first, so every attempt burns it whatever the outcome;
verify the evidence and that its report_data binds this nonce and this runtime (so the ephemeral
key); appraise it against the resource's release policy; then HPKE-seal the secret to the
ephemeral key, with the resource, version and nonce as AAD so the answer fits one request only.
Every decision, release or refusal with its code, is recorded before the answer leaves.

Owner API (issue 6's broker enforcement point): a credential authenticates one owner, and that
owner may act only on names under its own ``kbs:///OWNER/`` prefix. Every call, read or change,
allowed or refused, is recorded with its action, the acting owner and the outcome; a refusal for
another owner's name answers exactly as a name that does not exist (``kbs.unauthorized`` is
masked as ``kbs.not_found``), so a credential cannot probe which names other owners hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from pydantic import ValidationError

from medclave.attestation import Check, Verification, verify_bundle
from medclave.crypto import hpke
from medclave.crypto.canonical import canonical_json
from medclave.errors import AttestationError, InputError, KbsError, MedclaveError
from medclave.kbs import tokens
from medclave.kbs.checks import NONCE_BYTES
from medclave.kbs.checks import appraise as _appraise
from medclave.kbs.checks import ephemeral_key as _ephemeral_key
from medclave.kbs.checks import new_secret as _secret
from medclave.kbs.checks import nonce_bytes as _nonce
from medclave.kbs.keywrap import KeyWrapper
from medclave.kbs.models import RELEASE_INFO, ReleasePolicy, release_aad
from medclave.kbs.names import ResourceName, valid_owner
from medclave.kbs.revocation import Revocation, RevocationIn, first_match, identities
from medclave.kbs.signing import (
    BrokerSigner,
    bundle_digest,
    release_statement,
    standing_statement,
)
from medclave.kbs.store import Decision, KbsStore, NonceState, PolicyVersion, ResourceInfo
from medclave.protocol.evidence import EvidenceBundle
from medclave.util.clock import system_clock

DEFAULT_NONCE_TTL = timedelta(seconds=60)
T = TypeVar("T")


def wrap_aad(resource: ResourceName, version: int) -> bytes:
    """What a wrapped secret is bound to: moved to another resource or version, it won't open."""
    return canonical_json({"resource": str(resource), "version": version})


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires_at: datetime


@dataclass(frozen=True)
class Release:
    resource: str
    version: int
    sealed: bytes  # HPKE enc || ciphertext of the secret
    key_id: str  # fingerprint of the broker key that signed the answer
    signature: bytes  # Ed25519 over signing.release_statement(...)


@dataclass(frozen=True)
class Standing:
    resource: str
    standing: Literal["good", "revoked"]
    key_id: str
    signature: bytes  # Ed25519 over signing.standing_statement(...)


@dataclass
class _Trace:
    """What a decision record says; filled in as the release proceeds."""

    action: str
    resource: str
    client: str
    actor: str = ""  # the owner whose credential made the call (owner API only)
    version: int | None = None
    policy_digest: str = ""
    evidence_sha256: str = ""
    checks: tuple[Check, ...] = field(default_factory=tuple)


class KeyBroker:
    """The broker's logic; the HTTP layer (``kbs.app``) only translates to and from it."""

    def __init__(
        self,
        store: KbsStore,
        wrapper: KeyWrapper,
        *,
        signer: BrokerSigner,
        sim_roots: frozenset[str] = frozenset(),
        trusted_roots: frozenset[str] | None = None,
        nonce_ttl: timedelta = DEFAULT_NONCE_TTL,
        clock: Callable[[], datetime] = system_clock,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        if nonce_ttl <= timedelta(0):
            raise InputError("config.invalid", "nonce lifetime must be positive")
        self.store = store
        self._wrapper = wrapper
        self.signer = signer
        self._sim_roots = sim_roots
        self._trusted_roots = trusted_roots
        self._ttl = nonce_ttl
        self._clock = clock
        self._on_decision = on_decision
        self._listeners: list[Callable[[Decision], None]] = []

    def add_decision_listener(self, listener: Callable[[Decision], None]) -> None:
        """Also call ``listener`` with every decision once it is recorded (the metrics)."""
        self._listeners.append(listener)

    # --- release protocol ------------------------------------------------------------------

    def challenge(self) -> Challenge:
        now = self._clock()
        nonce = os.urandom(NONCE_BYTES)
        expires = now + self._ttl
        self.store.add_nonce(nonce, expires, now)
        return Challenge(nonce, expires)

    def release(
        self,
        resource: str,
        nonce: str | bytes,
        bundle: EvidenceBundle,
        client_id: str,
        *,
        version: int | None = None,
    ) -> Release:
        """The secret named ``resource`` sealed to the bundle's ephemeral key, or a refusal."""
        now = self._clock()
        trace = _Trace("release", resource if isinstance(resource, str) else "", client_id)
        try:
            name = ResourceName.parse(resource)
            nonce_bytes = _nonce(nonce)
            self._spend(nonce_bytes, now)
            try:
                verification = verify_bundle(
                    bundle,
                    now=now,
                    expected_nonce=nonce_bytes,
                    sim_roots=self._sim_roots,
                    trusted_roots=self._trusted_roots,
                )
            except AttestationError as exc:
                trace.checks = tuple(exc.checks)
                raise
            trace.checks = verification.checks
            trace.evidence_sha256 = verification.evidence_digest  # its signed bytes (ECDSA is malleable)
            self._refuse_revoked(name.owner, verification, bundle)
            ephemeral = _ephemeral_key(bundle.runtime)
            secret = self.store.secret_version(name, version)
            trace.version = secret.version
            policy_record = self.store.policy_version(name)
            trace.policy_digest = policy_record.digest
            policy = ReleasePolicy.model_validate_json(policy_record.document)
            # The nonce was issued at most one TTL ago and the evidence is newer than the nonce:
            # the oldest the evidence can be is the bound the policy's max age is checked against.
            _appraise(verification, policy, bundle.runtime, now, evidence_time=now - self._ttl)
            plain = self._wrapper.unwrap(secret.wrapped, wrap_aad(name, secret.version))
            sealed = hpke.seal(
                ephemeral, plain, RELEASE_INFO, release_aad(str(name), secret.version, nonce_bytes)
            )
            # Signed over everything the answer says (signing.py): without it anyone on the
            # path could seal a key of their own to the (public) ephemeral key.
            signature = self.signer.sign(release_statement(
                resource=str(name), version=secret.version, nonce=nonce_bytes,
                ephemeral_key=ephemeral, evidence=bundle_digest(bundle), sealed=sealed))
        except MedclaveError as exc:
            self._decide(trace, now, "refused", exc.code, exc.detail)
            raise
        except Exception as exc:  # fail closed, and say so in the record
            self._decide(trace, now, "refused", "internal", type(exc).__name__)
            raise KbsError("kbs.unavailable", "internal error during release") from exc
        self._decide(trace, now, "allowed", None, "released")
        return Release(str(name), secret.version, sealed, self.signer.key_id, signature)

    def standing(self, resource: str, nonce: str | bytes, bundle: EvidenceBundle,
                 client_id: str) -> Standing:
        """Whether the enclave that sent ``bundle`` is still in good standing with the owner of
        ``resource`` (not on its revocation list): a signed answer either way, so the enclave
        can act on "revoked" and nobody can forge "good". Same nonce rules as a release."""
        now = self._clock()
        trace = _Trace("standing", resource if isinstance(resource, str) else "", client_id)
        try:
            name = ResourceName.parse(resource)
            nonce_bytes = _nonce(nonce)
            self._spend(nonce_bytes, now)
            try:
                verification = verify_bundle(bundle, now=now, expected_nonce=nonce_bytes,
                                             sim_roots=self._sim_roots,
                                             trusted_roots=self._trusted_roots)
            except AttestationError as exc:
                trace.checks = tuple(exc.checks)
                raise
            trace.checks = verification.checks
            trace.evidence_sha256 = verification.evidence_digest
            if self.store.resource_info(name) is None:
                raise KbsError("kbs.not_found", f"no resource {name}")
            hit = first_match(self.store.revocations(name.owner),
                              identities(verification, bundle))
            result: Literal["good", "revoked"] = "good" if hit is None else "revoked"
            signature = self.signer.sign(standing_statement(
                resource=str(name), nonce=nonce_bytes, evidence=bundle_digest(bundle),
                standing=result))
        except MedclaveError as exc:
            self._decide(trace, now, "refused", exc.code, exc.detail)
            raise
        if hit is None:
            self._decide(trace, now, "allowed", None, "good standing")
        else:
            self._decide(trace, now, "refused", "kbs.revoked", f"revoked: {hit.kind}")
        return Standing(str(name), result, self.signer.key_id, signature)

    def now(self) -> datetime:
        return self._clock()

    @property
    def nonce_ttl(self) -> timedelta:
        return self._ttl

    def attested(self, nonce: str | bytes, bundle: EvidenceBundle, now: datetime) -> Verification:
        """Spend the nonce, then verify the bundle over it: how every attested call starts
        (the mesh CA's issuance too, kbs/mesh_ca.py)."""
        nonce_bytes = _nonce(nonce)
        self._spend(nonce_bytes, now)
        return verify_bundle(bundle, now=now, expected_nonce=nonce_bytes,
                             sim_roots=self._sim_roots, trusted_roots=self._trusted_roots)

    def record(self, action: str, resource: str, client_id: str, error: MedclaveError | None,
               detail: str, *, evidence_sha256: str = "", checks: tuple[Check, ...] = ()) -> None:
        """Record a decision made outside this class (the mesh CA's)."""
        trace = _Trace(action, resource, client_id, evidence_sha256=evidence_sha256,
                       checks=checks)
        if error is None:
            self._decide(trace, self._clock(), "allowed", None, detail)
        else:
            self._decide(trace, self._clock(), "refused", error.code, error.detail)

    def _refuse_revoked(self, owner: str, verification: Verification,
                        bundle: EvidenceBundle) -> None:
        hit = first_match(self.store.revocations(owner), identities(verification, bundle))
        if hit is not None:
            raise KbsError("kbs.revoked", f"{hit.kind} {hit.value[:24]} revoked: {hit.reason}")

    def _spend(self, nonce: bytes, now: datetime) -> None:
        state = self.store.spend_nonce(nonce, now)
        if state is NonceState.UNKNOWN:
            raise KbsError("kbs.nonce_unknown", "this broker never issued that nonce")
        if state is NonceState.USED:
            raise KbsError("kbs.nonce_replayed", "the nonce was already spent")
        if state is NonceState.EXPIRED:
            raise KbsError("kbs.nonce_expired", "the nonce expired before it was used")

    # --- owner API -------------------------------------------------------------------------

    def issue_owner_token(self, owner: str) -> str:
        return tokens.issue_owner_token(self.store, owner, now=self._clock())

    def authenticate(self, token: str | None) -> str:
        return tokens.authenticate(self.store, token)

    def create_resource(
        self, owner: str, resource: str, secret: bytes | None, *, client_id: str
    ) -> int:
        def op(name: ResourceName, trace: _Trace) -> int:
            value = _secret(secret)
            return self.store.create_secret(
                name, self._wrapper.wrap(value, wrap_aad(name, 1)), self._clock()
            )

        return self._owner_op("create", owner, resource, client_id, op)

    def rotate_resource(
        self,
        owner: str,
        resource: str,
        secret: bytes | None,
        *,
        client_id: str,
        expected_version: int | None = None,
    ) -> int:
        """A new current version in one atomic step; the old one stays until retired."""

        def op(name: ResourceName, trace: _Trace) -> int:
            value = _secret(secret)
            info = self.store.resource_info(name)
            if info is None:
                raise KbsError("kbs.not_found", f"no resource {name}")
            seen = info.current if expected_version is None else expected_version
            wrapped = self._wrapper.wrap(value, wrap_aad(name, seen + 1))
            return self.store.rotate_secret(name, wrapped, self._clock(), seen)

        return self._owner_op("rotate", owner, resource, client_id, op)

    def retire_resource_version(
        self, owner: str, resource: str, version: int, *, client_id: str
    ) -> None:
        def op(name: ResourceName, trace: _Trace) -> int:
            trace.version = version
            self.store.retire_secret_version(name, version)
            return version

        self._owner_op("retire", owner, resource, client_id, op)

    def delete_resource(self, owner: str, resource: str, *, client_id: str) -> None:
        def op(name: ResourceName, trace: _Trace) -> int:
            self.store.delete_resource(name)
            return 0

        self._owner_op("delete", owner, resource, client_id, op)

    def resource(self, owner: str, resource: str, *, client_id: str = "") -> ResourceInfo:
        def op(name: ResourceName | None) -> ResourceInfo:
            assert name is not None
            info = self.store.resource_info(name)
            if info is None:
                raise KbsError("kbs.not_found", f"no resource {name}")
            return info

        return self._owner_read("read", owner, resource, client_id, op)

    def policy_versions(self, owner: str, resource: str) -> tuple[int, ...]:
        """Part of a read already recorded by :meth:`resource`; still owner-checked."""
        return self.store.policy_versions(self._owned(owner, resource))

    def list_resources(self, owner: str, *, client_id: str = "") -> list[ResourceInfo]:
        # The store lists by owner: the authenticated owner's own names, nobody else's.
        return self._owner_read("list", owner, None, client_id,
                                lambda _: self.store.list_resources(valid_owner(owner)))

    def set_policy(
        self,
        owner: str,
        resource: str,
        policy: ReleasePolicy,
        *,
        client_id: str,
        expected_version: int | None = None,
    ) -> int:
        def op(name: ResourceName, trace: _Trace) -> int:
            trace.policy_digest = policy.digest()
            return self.store.put_policy(
                name, policy.to_json(), trace.policy_digest, self._clock(), expected_version
            )

        return self._owner_op("policy_set", owner, resource, client_id, op)

    def get_policy(
        self, owner: str, resource: str, version: int | None = None, *, client_id: str = ""
    ) -> tuple[PolicyVersion, ReleasePolicy, tuple[int, ...]]:
        def op(name: ResourceName | None) -> tuple[PolicyVersion, ReleasePolicy, tuple[int, ...]]:
            assert name is not None
            record = self.store.policy_version(name, version)
            return (
                record,
                ReleasePolicy.model_validate_json(record.document),
                self.store.policy_versions(name),
            )

        return self._owner_read("policy_read", owner, resource, client_id, op)

    def retire_policy_version(
        self, owner: str, resource: str, version: int, *, client_id: str
    ) -> None:
        def op(name: ResourceName, trace: _Trace) -> int:
            trace.version = version
            self.store.retire_policy_version(name, version)
            return version

        self._owner_op("policy_retire", owner, resource, client_id, op)

    def decisions(
        self, owner: str, *, resource: str | None = None, limit: int = 100, client_id: str = ""
    ) -> list[Decision]:
        """Decisions on the owner's resources and those its credential made (newest first);
        read before this read is itself recorded."""
        return self._owner_read(
            "decisions_read", owner, resource, client_id,
            lambda _: self.store.decisions(owner=valid_owner(owner), resource=resource,
                                           limit=limit),
        )

    def revoke(self, owner: str, entry: RevocationIn, *, client_id: str) -> Revocation:
        """Put one identity on ``owner``'s revocation list (every release of the owner's
        resources to it is refused from now on, and its standing checks answer revoked)."""
        revocation = Revocation(valid_owner(owner), entry.kind, entry.normalized(),
                                entry.reason, self._clock())
        self._owner_read("revoke", owner, None, client_id,
                         lambda _: self.store.put_revocation(revocation))
        return revocation

    def unrevoke(self, owner: str, kind: str, value: str, *, client_id: str) -> None:
        def op(_: ResourceName | None) -> None:
            try:
                entry = RevocationIn.model_validate({"kind": kind, "value": value})
            except ValidationError as exc:
                raise InputError("input.malformed", "not a revocation kind and hex value") from exc
            if not self.store.delete_revocation(valid_owner(owner), entry.kind,
                                                entry.normalized()):
                raise KbsError("kbs.not_found", "no such revocation")

        self._owner_read("unrevoke", owner, None, client_id, op)

    def revocations(self, owner: str, *, client_id: str = "") -> list[Revocation]:
        return self._owner_read("revocations_read", owner, None, client_id,
                                lambda _: self.store.revocations(valid_owner(owner)))

    def record_refusal(
        self, action: str, resource: str, client_id: str, error: MedclaveError, *,
        actor: str = "",
    ) -> None:
        """For refusals the HTTP layer meets before the broker (credentials, rate limits)."""
        self._decide(
            _Trace(action, resource, client_id, actor=actor), self._clock(), "refused",
            error.code, error.detail,
        )

    def _owned(self, owner: str, resource: str) -> ResourceName:
        name = ResourceName.parse(resource)
        if name.owner != owner:
            # Same public answer as not found (errors.py): the caller learns nothing.
            raise KbsError("kbs.unauthorized", f"{owner} does not own {name}")
        return name

    def _owner_op(
        self,
        action: str,
        owner: str,
        resource: str,
        client_id: str,
        op: Callable[[ResourceName, _Trace], int],
    ) -> int:
        now = self._clock()
        trace = _Trace(action, resource, client_id, actor=owner)
        try:
            name = self._owned(owner, resource)
            result = op(name, trace)
        except MedclaveError as exc:
            self._decide(trace, now, "refused", exc.code, exc.detail)
            raise
        if action in ("create", "rotate", "policy_set"):
            trace.version = result
        self._decide(trace, now, "allowed", None, action)
        return result

    def _owner_read(
        self,
        action: str,
        owner: str,
        resource: str | None,
        client_id: str,
        op: Callable[[ResourceName | None], T],
    ) -> T:
        """A read through the owner API: owner-checked and recorded like a change."""
        now = self._clock()
        trace = _Trace(action, resource or "", client_id, actor=owner)
        try:
            name = None if resource is None else self._owned(owner, resource)
            result = op(name)
        except MedclaveError as exc:
            self._decide(trace, now, "refused", exc.code, exc.detail)
            raise
        self._decide(trace, now, "allowed", None, action)
        return result

    def _decide(
        self,
        trace: _Trace,
        now: datetime,
        outcome: Literal["allowed", "refused"],
        code: str | None,
        detail: str,
    ) -> None:
        decision = Decision(
            at=now,
            action=trace.action,
            resource=trace.resource[:400],
            outcome=outcome,
            client=trace.client[:200],
            code=code,
            version=trace.version,
            detail=detail[:1000],
            policy_digest=trace.policy_digest,
            evidence_sha256=trace.evidence_sha256,
            checks=tuple(f"{c.name}:{'ok' if c.ok else 'failed'}" for c in trace.checks),
            actor=trace.actor[:200],
        )
        self.store.record_decision(decision)
        if self._on_decision is not None:
            self._on_decision(decision)
        for listener in self._listeners:
            listener(decision)

