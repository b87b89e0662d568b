"""The broker's storage interface, its records, and the in-memory implementation.

Secrets reach the store already wrapped (:mod:`medclave.kbs.keywrap`); the store never sees a
plaintext key. Every change is a new version; the previous versions stay until their owner retires
them, and the current version can never be retired (so a resource always has one usable key).
Rotation is one atomic step: the new version and the move of ``current`` to it commit together,
guarded by the version the caller saw (optimistic concurrency: ``kbs.conflict`` when it moved).

Decision log retention. Every decision on an owner's resources stays for good: releases, refusals
of evidence that verified (a real TEE that the policy turned away), and every owner-API call made
with a valid owner credential. Refusals of callers who proved nothing (an unknown, spent or
expired nonce, a malformed request, evidence that does not verify, a failed owner authentication)
cost the caller nothing to repeat, so they are not kept one row each: they are counted, one row
per (minute, action, resource, code, client) with ``count`` requests in it (the first request's
detail), and at most :data:`MAX_AGGREGATED_DECISIONS` such rows are kept, the oldest dropped
first. Permanent rows are never dropped to make room. :func:`is_aggregated` is the rule.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Literal, Protocol

from medclave.errors import InputError, KbsError
from medclave.kbs.names import ResourceName
from medclave.kbs.revocation import MAX_REVOCATIONS_PER_OWNER, Revocation

# A spent or expired nonce is remembered this long past its expiry, so a replay is reported as
# a replay rather than as an unknown nonce (both are refused either way).
NONCE_MEMORY = timedelta(minutes=10)
# At most this many aggregated refusal rows (module docstring); about 3 MB in SQLite.
MAX_AGGREGATED_DECISIONS = 10_000


class NonceState(Enum):
    FRESH = "fresh"  # issued, unused, not expired: now spent
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"


@dataclass(frozen=True)
class SecretVersion:
    resource: str
    version: int
    wrapped: bytes
    created: datetime


@dataclass(frozen=True)
class PolicyVersion:
    resource: str
    version: int
    document: str  # JSON of the ReleasePolicy
    digest: str
    created: datetime


@dataclass(frozen=True)
class ResourceInfo:
    resource: str
    current: int
    versions: tuple[int, ...]


@dataclass(frozen=True)
class Decision:
    """One broker decision: a release or its refusal, or an owner-API call (or its refusal).

    ``actor`` is the owner whose credential made an owner-API call ("" for releases, which carry
    evidence rather than a credential, and for calls refused before authentication); ``owner``
    is the owner the resource belongs to. A cross-owner attempt is thus seen by both.
    """

    at: datetime
    # release | create | rotate | retire | delete | policy_set | policy_retire | read | list
    # | policy_read | decisions_read | authenticate
    action: str
    resource: str
    outcome: Literal["allowed", "refused"]
    client: str
    code: str | None = None
    version: int | None = None
    detail: str = ""
    policy_digest: str = ""
    evidence_sha256: str = ""
    checks: tuple[str, ...] = ()  # "name:ok" / "name:failed", in order
    actor: str = ""
    count: int = 1  # requests this row stands for (more than one only when aggregated)

    @property
    def owner(self) -> str | None:
        """The owner of ``resource``, or None when it is not a resource name (a refused request
        may name anything; such a decision is visible to its actor and the administrator only).
        Only the parser's own refusal (``input.malformed``) means "no owner"; any other error
        propagates."""
        try:
            return ResourceName.parse(self.resource).owner
        except InputError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "client": self.client,
            "code": self.code,
            "version": self.version,
            "detail": self.detail,
            "policy_digest": self.policy_digest,
            "evidence_sha256": self.evidence_sha256,
            "checks": list(self.checks),
            "actor": self.actor,
            "count": self.count,
        }


def is_aggregated(decision: Decision) -> bool:
    """Whether ``decision`` is counted in an aggregate row rather than kept as its own: a refusal
    made by no owner credential (``actor``) and on no evidence that verified (every check ok)."""
    verified = bool(decision.checks) and all(c.endswith(":ok") for c in decision.checks)
    return (decision.outcome == "refused" and decision.code is not None
            and not decision.actor and not verified)


AggregateKey = tuple[str, str, str, str, str]
# (resource, version, wrapped under the old KEK) -> wrapped under the new one (kbs/rekey.py).
Rewrap = Callable[[str, int, bytes], bytes]


def aggregate_key(decision: Decision) -> AggregateKey:
    """The aggregate row a decision counts in: its UTC minute, action, resource, code, client."""
    minute = decision.at.astimezone(UTC).replace(second=0, microsecond=0).isoformat()
    return (minute, decision.action, decision.resource, decision.code or "", decision.client)


class KbsStore(Protocol):
    """Resources (versioned wrapped secrets), policies (versioned), nonces, decisions, owners."""

    # owners
    def add_owner_token(self, owner: str, token_hash: bytes, created: datetime) -> None: ...
    def owner_token_hashes(self, owner: str) -> tuple[bytes, ...]: ...
    def revoke_owner_tokens(self, owner: str) -> int: ...

    # secrets
    def create_secret(self, resource: ResourceName, wrapped: bytes, created: datetime) -> int: ...
    def rotate_secret(
        self, resource: ResourceName, wrapped: bytes, created: datetime, expected_version: int
    ) -> int: ...
    def secret_version(
        self, resource: ResourceName, version: int | None = None
    ) -> SecretVersion: ...
    def resource_info(self, resource: ResourceName) -> ResourceInfo | None: ...
    def list_resources(self, owner: str) -> list[ResourceInfo]: ...
    def retire_secret_version(self, resource: ResourceName, version: int) -> None: ...
    def delete_resource(self, resource: ResourceName) -> None: ...

    # policies
    def put_policy(
        self,
        resource: ResourceName,
        document: str,
        digest: str,
        created: datetime,
        expected_version: int | None = None,
    ) -> int: ...
    def policy_version(
        self, resource: ResourceName, version: int | None = None
    ) -> PolicyVersion: ...
    def policy_versions(self, resource: ResourceName) -> tuple[int, ...]: ...
    def retire_policy_version(self, resource: ResourceName, version: int) -> None: ...

    # nonces
    def add_nonce(self, nonce: bytes, expires_at: datetime, now: datetime) -> None: ...
    def spend_nonce(self, nonce: bytes, now: datetime) -> NonceState: ...

    # revocation lists (kbs/revocation.py), one per owner
    def put_revocation(self, entry: Revocation) -> None:
        """Add (or re-state) an entry; ``kbs.conflict`` past the per-owner bound."""
        ...
    def delete_revocation(self, owner: str, kind: str, value: str) -> bool: ...
    def revocations(self, owner: str) -> list[Revocation]: ...

    # decisions
    def record_decision(self, decision: Decision) -> None:
        """Keep ``decision``, or count it in its aggregate row (:func:`is_aggregated`)."""
        ...
    def decisions(
        self, *, owner: str | None = None, resource: str | None = None, limit: int = 100
    ) -> list[Decision]: ...

    # the KEK: every secret version re-wrapped, the new KEK's id and the decision recorded,
    # all at once or not at all; the id of the KEK the store was last re-wrapped under.
    def rewrap_secrets(self, rewrap: Rewrap, *, kek_id: str, decision: Decision) -> int: ...
    def kek_id(self) -> str | None: ...

    def close(self) -> None: ...


def _not_found(resource: ResourceName | str, what: str = "resource") -> KbsError:
    return KbsError("kbs.not_found", f"no {what} {resource}")


@dataclass
class _Versions:
    current: int
    items: dict[int, Any] = field(default_factory=dict)


class MemoryKbsStore:
    """A :class:`KbsStore` in process memory: for tests and throwaway brokers."""

    def __init__(self, *, max_aggregated: int = MAX_AGGREGATED_DECISIONS) -> None:
        self._lock = threading.Lock()
        self._revocations: dict[str, dict[tuple[str, str], Revocation]] = {}
        self._tokens: dict[str, list[bytes]] = {}
        self._secrets: dict[str, _Versions] = {}
        self._policies: dict[str, _Versions] = {}
        self._nonces: dict[bytes, tuple[datetime, bool]] = {}
        # Row id -> decision, in insertion order; aggregate rows by key, oldest first.
        self._decisions: dict[int, Decision] = {}
        self._next_id = 0
        self._aggregates: OrderedDict[AggregateKey, int] = OrderedDict()
        self._max_aggregated = max_aggregated
        self._kek_id: str | None = None

    # owners
    def add_owner_token(self, owner: str, token_hash: bytes, created: datetime) -> None:
        with self._lock:
            self._tokens.setdefault(owner, []).append(token_hash)

    def owner_token_hashes(self, owner: str) -> tuple[bytes, ...]:
        with self._lock:
            return tuple(self._tokens.get(owner, ()))

    def revoke_owner_tokens(self, owner: str) -> int:
        with self._lock:
            return len(self._tokens.pop(owner, []))

    # secrets
    def create_secret(self, resource: ResourceName, wrapped: bytes, created: datetime) -> int:
        with self._lock:
            key = str(resource)
            if key in self._secrets:
                raise KbsError("kbs.conflict", f"{resource} exists; rotate it instead")
            self._secrets[key] = _Versions(1, {1: SecretVersion(key, 1, wrapped, created)})
            return 1

    def rotate_secret(
        self, resource: ResourceName, wrapped: bytes, created: datetime, expected_version: int
    ) -> int:
        with self._lock:
            entry = self._secrets.get(str(resource))
            if entry is None:
                raise _not_found(resource)
            if entry.current != expected_version:
                raise KbsError("kbs.conflict", f"{resource} is at version {entry.current}")
            new = entry.current + 1
            entry.items[new] = SecretVersion(str(resource), new, wrapped, created)
            entry.current = new
            return new

    def secret_version(self, resource: ResourceName, version: int | None = None) -> SecretVersion:
        with self._lock:
            entry = self._secrets.get(str(resource))
            if entry is None:
                raise _not_found(resource)
            item = entry.items.get(entry.current if version is None else version)
            if item is None:
                raise _not_found(resource, f"version {version} of")
            assert isinstance(item, SecretVersion)
            return item

    def resource_info(self, resource: ResourceName) -> ResourceInfo | None:
        with self._lock:
            entry = self._secrets.get(str(resource))
            if entry is None:
                return None
            return ResourceInfo(str(resource), entry.current, tuple(sorted(entry.items)))

    def list_resources(self, owner: str) -> list[ResourceInfo]:
        with self._lock:
            return [
                ResourceInfo(k, v.current, tuple(sorted(v.items)))
                for k, v in sorted(self._secrets.items())
                if ResourceName.parse(k).owner == owner
            ]

    def retire_secret_version(self, resource: ResourceName, version: int) -> None:
        with self._lock:
            self._retire(self._secrets, resource, version)

    def delete_resource(self, resource: ResourceName) -> None:
        with self._lock:
            if self._secrets.pop(str(resource), None) is None:
                raise _not_found(resource)
            self._policies.pop(str(resource), None)

    @staticmethod
    def _retire(table: dict[str, _Versions], resource: ResourceName, version: int) -> None:
        entry = table.get(str(resource))
        if entry is None or version not in entry.items:
            raise _not_found(resource, f"version {version} of")
        if version == entry.current:
            raise KbsError("kbs.conflict", "the current version cannot be retired; rotate first")
        del entry.items[version]

    # policies
    def put_policy(
        self,
        resource: ResourceName,
        document: str,
        digest: str,
        created: datetime,
        expected_version: int | None = None,
    ) -> int:
        with self._lock:
            entry = self._policies.get(str(resource))
            current = entry.current if entry else 0
            if expected_version is not None and expected_version != current:
                raise KbsError("kbs.conflict", f"policy of {resource} is at version {current}")
            new = current + 1
            record = PolicyVersion(str(resource), new, document, digest, created)
            if entry is None:
                self._policies[str(resource)] = _Versions(new, {new: record})
            else:
                entry.items[new] = record
                entry.current = new
            return new

    def policy_version(self, resource: ResourceName, version: int | None = None) -> PolicyVersion:
        with self._lock:
            entry = self._policies.get(str(resource))
            if entry is None:
                raise KbsError("kbs.policy_missing", f"{resource} has no release policy")
            item = entry.items.get(entry.current if version is None else version)
            if item is None:
                raise _not_found(resource, f"policy version {version} of")
            assert isinstance(item, PolicyVersion)
            return item

    def policy_versions(self, resource: ResourceName) -> tuple[int, ...]:
        with self._lock:
            entry = self._policies.get(str(resource))
            return tuple(sorted(entry.items)) if entry else ()

    def retire_policy_version(self, resource: ResourceName, version: int) -> None:
        with self._lock:
            self._retire(self._policies, resource, version)

    # nonces
    def add_nonce(self, nonce: bytes, expires_at: datetime, now: datetime) -> None:
        with self._lock:
            horizon = now - NONCE_MEMORY
            for old in [n for n, (exp, _) in self._nonces.items() if exp < horizon]:
                del self._nonces[old]
            self._nonces[nonce] = (expires_at, False)

    def spend_nonce(self, nonce: bytes, now: datetime) -> NonceState:
        with self._lock:
            entry = self._nonces.get(nonce)
            if entry is None:
                return NonceState.UNKNOWN
            expires_at, used = entry
            if used:
                return NonceState.USED
            self._nonces[nonce] = (expires_at, True)
            return NonceState.EXPIRED if now >= expires_at else NonceState.FRESH

    # decisions
    def put_revocation(self, entry: Revocation) -> None:
        with self._lock:
            mine = self._revocations.setdefault(entry.owner, {})
            key = (entry.kind, entry.value)
            if key not in mine and len(mine) >= MAX_REVOCATIONS_PER_OWNER:
                raise KbsError("kbs.conflict", "the revocation list is full")
            mine[key] = entry

    def delete_revocation(self, owner: str, kind: str, value: str) -> bool:
        with self._lock:
            return self._revocations.get(owner, {}).pop((kind, value), None) is not None

    def revocations(self, owner: str) -> list[Revocation]:
        with self._lock:
            return list(self._revocations.get(owner, {}).values())

    def record_decision(self, decision: Decision) -> None:
        with self._lock:
            self._record(decision)

    def _record(self, decision: Decision) -> None:
        key = aggregate_key(decision) if is_aggregated(decision) else None
        row = self._aggregates.get(key) if key is not None else None
        if row is not None:
            held = self._decisions[row]
            self._decisions[row] = replace(held, count=held.count + decision.count)
            return
        self._next_id += 1
        self._decisions[self._next_id] = decision
        if key is not None:
            self._aggregates[key] = self._next_id
            while len(self._aggregates) > self._max_aggregated:
                del self._decisions[self._aggregates.popitem(last=False)[1]]

    def decisions(
        self, *, owner: str | None = None, resource: str | None = None, limit: int = 100
    ) -> list[Decision]:
        with self._lock:
            out = [
                d
                for d in reversed(self._decisions.values())
                if (owner is None or owner in (d.owner, d.actor))
                and (resource is None or d.resource == resource)
            ]
            return out[:limit]

    def rewrap_secrets(self, rewrap: Rewrap, *, kek_id: str, decision: Decision) -> int:
        with self._lock:
            # Every new value first; nothing is replaced unless all of them were made.
            fresh = {(name, v): rewrap(name, v, item.wrapped)
                     for name, entry in self._secrets.items()
                     for v, item in entry.items.items()}
            for (name, v), wrapped in fresh.items():
                entry = self._secrets[name]
                entry.items[v] = replace(entry.items[v], wrapped=wrapped)
            self._kek_id = kek_id
            self._record(replace(decision, detail=f"{decision.detail}; {len(fresh)} secret "
                                 "versions re-wrapped"))
            return len(fresh)

    def kek_id(self) -> str | None:
        with self._lock:
            return self._kek_id

    def close(self) -> None:
        return None
