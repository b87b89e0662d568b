"""The key broker's owner API, and the decision record every broker call ends in.

Owner API (issue 6's broker enforcement point): a credential authenticates one owner, and that
owner may act only on names under its own ``kbs:///OWNER/`` prefix. Every call, read or change,
allowed or refused, is recorded with its action, the acting owner and the outcome; a refusal for
another owner's name answers exactly as a name that does not exist (``kbs.unauthorized`` is
masked as ``kbs.not_found``), so a credential cannot probe which names other owners hold.

:class:`~medclave.kbs.service.KeyBroker` is this class with the release protocol added; the two
halves share the store, the key wrapper, the clock and :meth:`OwnerApi._decide`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import ValidationError

from medclave.attestation import Check
from medclave.crypto.canonical import canonical_json
from medclave.errors import InputError, KbsError, MedclaveError
from medclave.kbs import tokens
from medclave.kbs.checks import new_secret as _secret
from medclave.kbs.keywrap import KeyWrapper
from medclave.kbs.models import ReleasePolicy
from medclave.kbs.names import ResourceName, valid_owner
from medclave.kbs.revocation import Revocation, RevocationIn
from medclave.kbs.store import Decision, KbsStore, PolicyVersion, ResourceInfo
from medclave.util.clock import system_clock

T = TypeVar("T")


def wrap_aad(resource: ResourceName, version: int) -> bytes:
    """What a wrapped secret is bound to: moved to another resource or version, it won't open."""
    return canonical_json({"resource": str(resource), "version": version})


@dataclass
class Trace:
    """What a decision record says; filled in as the release proceeds."""

    action: str
    resource: str
    client: str
    actor: str = ""  # the owner whose credential made the call (owner API only)
    version: int | None = None
    policy_digest: str = ""
    evidence_sha256: str = ""
    checks: tuple[Check, ...] = field(default_factory=tuple)


class OwnerApi:
    """The owner operations on resources, policies and revocations, each owner-checked and
    recorded; the HTTP layer (``kbs.app``) only translates to and from it."""

    def __init__(
        self,
        store: KbsStore,
        wrapper: KeyWrapper,
        *,
        clock: Callable[[], datetime] = system_clock,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        self.store = store
        self._wrapper = wrapper
        self._clock = clock
        self._on_decision = on_decision
        self._listeners: list[Callable[[Decision], None]] = []

    def add_decision_listener(self, listener: Callable[[Decision], None]) -> None:
        """Also call ``listener`` with every decision once it is recorded (the metrics)."""
        self._listeners.append(listener)

    # --- owner API -------------------------------------------------------------------------

    def issue_owner_token(self, owner: str) -> str:
        return tokens.issue_owner_token(self.store, owner, now=self._clock())

    def authenticate(self, token: str | None) -> str:
        return tokens.authenticate(self.store, token)

    def create_resource(
        self, owner: str, resource: str, secret: bytes | None, *, client_id: str
    ) -> int:
        def op(name: ResourceName, trace: Trace) -> int:
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

        def op(name: ResourceName, trace: Trace) -> int:
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
        def op(name: ResourceName, trace: Trace) -> int:
            trace.version = version
            self.store.retire_secret_version(name, version)
            return version

        self._owner_op("retire", owner, resource, client_id, op)

    def delete_resource(self, owner: str, resource: str, *, client_id: str) -> None:
        def op(name: ResourceName, trace: Trace) -> int:
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
        def op(name: ResourceName, trace: Trace) -> int:
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
        def op(name: ResourceName, trace: Trace) -> int:
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
            Trace(action, resource, client_id, actor=actor), self._clock(), "refused",
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
        op: Callable[[ResourceName, Trace], int],
    ) -> int:
        now = self._clock()
        trace = Trace(action, resource, client_id, actor=owner)
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
        trace = Trace(action, resource or "", client_id, actor=owner)
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
        trace: Trace,
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
