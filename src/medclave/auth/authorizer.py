"""Per-request authorization with Cedar (via ``cedarpy``), fail-closed, every decision recorded.

Policies are plain ``.cedar`` files a hospital can read (``policies/`` holds the defaults), each
policy named by an ``@id`` annotation: decisions cite those ids. Policies are validated against
the schema when loaded, so a typo fails at start-up rather than silently skipping a rule.

Cedar skips a policy whose evaluation errors (a missing entity, say). A skipped ``forbid`` could
let a request through, so here ANY evaluation error denies; the errors are returned and
recorded. Policies marked ``@break_glass`` are the ones a break-glass grant enables; when one of
them allows a request, the grant's use is recorded and alerted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import cedarpy

from medclave.auth.breakglass import BreakGlass, Grant
from medclave.auth.entities import (
    Document,
    Entity,
    EntityStore,
    EntityUid,
    User,
    as_cedar,
    uid_of,
)
from medclave.auth.tokens import Identity
from medclave.errors import AuthError, InputError
from medclave.util.clock import Clock

MAX_POLICY_BYTES: Final = 1024 * 1024
ACTIONS: Final = ("infer", "retrieve", "read_history", "break_glass", "admin")
RESERVED_CONTEXT: Final = frozenset({"now", "break_glass"})
_POLICY_REF = re.compile(r"\bpolicy(\d+)\b")

Principal = Identity | User | EntityUid | str
Entities = EntityStore | Sequence[Entity | Mapping[str, Any]]
T = TypeVar("T")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: tuple[str, ...]  # @id of the policies that determined the decision
    errors: tuple[str, ...] = ()

    @property
    def decision(self) -> str:
        return "allow" if self.allowed else "deny"

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reasons": list(self.reasons),
            "errors": list(self.errors),
        }

    def require(self) -> None:
        """Raise ``auth.forbidden`` unless allowed: for enforcement points."""
        if not self.allowed:
            raise AuthError("auth.forbidden", f"denied by {list(self.reasons) or 'default deny'}")


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """What goes to the audit log for every decision."""

    at: datetime | None
    principal: str
    action: str
    resource: str
    decision: str
    reasons: tuple[str, ...]
    errors: tuple[str, ...]
    policy_digest: str
    break_glass_grant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat() if self.at else None,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "errors": list(self.errors),
            "policy_digest": self.policy_digest,
            "break_glass_grant": self.break_glass_grant,
        }


DecisionSink = Callable[[DecisionRecord], None]


@dataclass(frozen=True)
class PolicyBundle:
    policy_set: cedarpy.PolicySet
    schema: cedarpy.Schema
    ids: tuple[str, ...]  # @id of each policy, in Cedar's policy0..N order
    break_glass_ids: frozenset[str]
    digest: str  # SHA-256 over file names and contents: what an attestation can bind

    def name(self, cedar_id: str) -> str:
        m = _POLICY_REF.fullmatch(cedar_id)
        return self.ids[int(m.group(1))] if m and int(m.group(1)) < len(self.ids) else cedar_id


def _default_texts() -> tuple[list[tuple[str, str]], str]:
    folder = resources.files("medclave.auth").joinpath("policies")
    files = sorted((p.name, p.read_text(encoding="utf-8")) for p in folder.iterdir())
    cedar = [(n, t) for n, t in files if n.endswith(".cedar")]
    schema = next(t for n, t in files if n == "schema.json")
    return cedar, schema


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_POLICY_BYTES:
            raise InputError("config.invalid", f"{path.name} is larger than 1 MiB")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError("config.invalid", f"cannot read {path.name}: {exc}") from exc


def load_policies(directory: Path | None = None, *, schema: Path | None = None) -> PolicyBundle:
    """Every ``*.cedar`` file in ``directory`` (the shipped defaults when None), validated.

    The schema is ``schema`` if given, else ``directory/schema.json`` if present, else the
    shipped one. Raises ``config.invalid`` on parse or validation errors, a template, or a
    policy without a unique ``@id``.
    """
    default_files, default_schema = _default_texts()
    if directory is None:
        files = default_files
        schema_text = _read(schema) if schema else default_schema
    else:
        if not directory.is_dir():
            raise InputError("config.invalid", f"{directory} is not a folder")
        files = [(p.name, _read(p)) for p in sorted(directory.glob("*.cedar"))]
        local = directory / "schema.json"
        fallback = _read(local) if local.exists() else default_schema
        schema_text = _read(schema) if schema else fallback
    if not files:
        raise InputError("config.invalid", "no .cedar policy files found")
    text = "\n".join(body for _, body in files)
    try:
        schema_handle = cedarpy.Schema.from_json_str(schema_text)
        policy_set = cedarpy.PolicySet.from_str(text)
        doc = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise InputError("config.invalid", f"the policies do not parse: {exc}") from exc
    if doc.get("templates"):
        raise InputError("config.invalid", "policy templates are not supported")
    static = doc.get("staticPolicies", {})
    ids: list[str] = []
    break_glass: set[str] = set()
    for n in range(len(static)):
        annotations = static[f"policy{n}"].get("annotations", {})
        pid = annotations.get("id")
        if not pid or pid in ids:
            raise InputError("config.invalid", f"policy {n} needs a unique @id annotation")
        ids.append(pid)
        if "break_glass" in annotations:
            break_glass.add(pid)
    result = cedarpy.validate_policies(text, schema_handle)
    if not result.validation_passed:
        errs = "; ".join(str(e) for e in result.errors)[:2000]
        raise InputError("config.invalid", f"the policies do not match the schema: {errs}")
    digest = hashlib.sha256()
    for name, body in [*files, ("schema.json", schema_text)]:
        for part in (name, body):
            raw = part.encode("utf-8")
            digest.update(len(raw).to_bytes(8, "big") + raw)
    return PolicyBundle(
        policy_set=policy_set,
        schema=schema_handle,
        ids=tuple(ids),
        break_glass_ids=frozenset(break_glass),
        digest=digest.hexdigest(),
    )


def _action(action: str | EntityUid) -> EntityUid:
    uid = EntityUid.parse(action, default_type="Action")
    if uid.type != "Action" or uid.id not in ACTIONS:
        raise InputError("input.malformed", f"unknown action {str(action)[:40]!r}")
    return uid


class Authorizer:
    """The authorization service the enclave, the broker and the proxy call.

    ``clock`` supplies ``now`` when a call gives none; ``sink`` receives a
    :class:`DecisionRecord` per decision (the audit log); ``break_glass`` is the grant store.
    """

    def __init__(
        self,
        policies_dir: Path | None = None,
        *,
        policies: PolicyBundle | None = None,
        sink: DecisionSink | None = None,
        break_glass: BreakGlass | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.policies = policies or load_policies(policies_dir)
        self._sink = sink
        self.break_glass = break_glass
        self._clock = clock

    # --- raw evaluation ------------------------------------------------------------------------

    def _evaluate(self, requests: list[dict[str, Any]], entities: Any) -> list[Decision]:
        results = cedarpy.is_authorized_batch(
            requests, self.policies.policy_set, entities, self.policies.schema
        )
        out = []
        name = self.policies.name
        for res in results:
            reasons = tuple(sorted(name(r) for r in res.diagnostics.reasons))  # Cedar gives a set
            errors = tuple(
                sorted(_POLICY_REF.sub(lambda m: name(m.group(0)), str(e)) for e in res.diagnostics.errors)
            )
            # Fail closed: an error may have skipped a forbid.
            allowed = res.decision == cedarpy.Decision.Allow and not errors
            out.append(Decision(allowed=allowed, reasons=reasons, errors=errors))
        return out

    def store(self, entities: Entities) -> EntityStore:
        if isinstance(entities, EntityStore):
            return entities
        return EntityStore(entities, schema=self.policies.schema)

    def evaluate(self, request: Mapping[str, Any], entities: Entities) -> Decision:
        """A Cedar CLI-style request ``{principal, action, resource, context}`` as given.

        For what-if tools (``medclave auth decide``): the context is trusted as written and
        nothing is recorded. Enforcement points use :meth:`decide`.
        """
        if not isinstance(request, Mapping) or not {"principal", "action", "resource"} <= set(request):
            raise InputError("input.malformed", "a request needs principal, action and resource")
        unknown = set(request) - {"principal", "action", "resource", "context"}
        if unknown:
            raise InputError("input.malformed", f"unknown request members {sorted(unknown)}")
        principal = EntityUid.parse(request["principal"])
        action = _action(request["action"])
        resource = EntityUid.parse(request["resource"])
        context = request.get("context") or {}
        if not isinstance(context, Mapping):
            raise InputError("input.malformed", "the request context is not an object")
        store = self.store(entities)
        cedar_request = {
            "principal": principal.to_json(),
            "action": action.to_json(),
            "resource": resource.to_json(),
            "context": dict(context),
        }
        return self._evaluate([cedar_request], store.handle_for(principal, [resource]))[0]

    # --- enforcement ---------------------------------------------------------------------------

    def _principal(self, principal: Principal, store: EntityStore) -> EntityUid | User:
        if isinstance(principal, Identity):
            return store.user_for(principal)
        if isinstance(principal, User):
            return principal
        return EntityUid.parse(principal, default_type="User")

    def _context(
        self,
        context: Mapping[str, Any] | None,
        now: datetime | None,
        grant: Grant | None,
    ) -> dict[str, Any]:
        ctx = dict(context or {})
        reserved = RESERVED_CONTEXT & set(ctx)
        if reserved:
            # Only this service may state the time and a break-glass grant.
            raise InputError("input.malformed", f"context keys {sorted(reserved)} are reserved")
        if now is not None:
            ctx["now"] = int(now.timestamp())
        if grant is not None:
            ctx["break_glass"] = grant.context()
        return ctx

    def _grant(self, grant_id: str | None, user: EntityUid, now: datetime | None) -> Grant | None:
        if grant_id is None:
            return None
        if self.break_glass is None or now is None:
            raise InputError("config.invalid", "break-glass needs a grant store and a clock")
        return self.break_glass.check(grant_id, user=user, now=now)

    def _record(
        self,
        decision: Decision,
        *,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        now: datetime | None,
        grant: Grant | None,
    ) -> None:
        if (
            grant is not None
            and decision.allowed
            and self.break_glass is not None
            and self.policies.break_glass_ids.intersection(decision.reasons)
        ):
            self.break_glass.record_use(
                grant, action=str(action), resource=str(resource), now=now or grant.granted_at
            )
        if self._sink is not None:
            self._sink(
                DecisionRecord(
                    at=now,
                    principal=str(principal),
                    action=str(action),
                    resource=str(resource),
                    decision=decision.decision,
                    reasons=decision.reasons,
                    errors=decision.errors,
                    policy_digest=self.policies.digest,
                    break_glass_grant=grant.id if grant else None,
                )
            )

    def decide(
        self,
        principal: Principal,
        action: str | EntityUid,
        resource: str | EntityUid | Entity,
        context: Mapping[str, Any] | None = None,
        entities: Entities = (),
        *,
        now: datetime | None = None,
        grant: str | None = None,
    ) -> Decision:
        """Decide one request. ``principal`` is ideally the verified :class:`Identity`.

        ``resource`` may be an entity object (e.g. a :class:`Document` the enclave just
        retrieved), which joins the request's entities. ``grant`` is a break-glass grant id.
        """
        at = now if now is not None else (self._clock() if self._clock else None)
        store = self.store(entities)
        who = self._principal(principal, store)
        who_uid = who.uid if isinstance(who, User) else who
        act = _action(action)
        if isinstance(resource, str | EntityUid):
            extra: list[Entity] = []
            res_uid = EntityUid.parse(resource)
        else:
            extra, res_uid = [resource], uid_of(resource)
        live = self._grant(grant, who_uid, at)
        request = {
            "principal": who_uid.to_json(),
            "action": act.to_json(),
            "resource": res_uid.to_json(),
            "context": self._context(context, at, live),
        }
        decision = self._evaluate([request], store.handle_for(who, [res_uid], extra))[0]
        self._record(decision, principal=who_uid, action=act, resource=res_uid, now=at, grant=live)
        return decision

    def filter_documents(
        self,
        user: Principal,
        candidates: Sequence[T],
        *,
        entities: Entities = (),
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        grant: str | None = None,
        action: str = "retrieve",
    ) -> list[T]:
        """The candidates ``user`` may ``retrieve``, in order: what retrieval may show a model.

        A candidate is a :class:`Document` (or Cedar entity dict), which joins the request's
        entities, or an entity id already in ``entities``.
        """
        at = now if now is not None else (self._clock() if self._clock else None)
        store = self.store(entities)
        who = self._principal(user, store)
        who_uid = who.uid if isinstance(who, User) else who
        act = _action(action)
        live = self._grant(grant, who_uid, at)
        # One JSON context for the whole batch (cedarpy would serialize it once per request).
        ctx = json.dumps(self._context(context, at, live))
        uids: list[EntityUid] = []
        extra: list[Entity | Mapping[str, Any]] = []
        for c in candidates:
            if isinstance(c, str | EntityUid):
                uids.append(EntityUid.parse(c, default_type="Document"))
            elif isinstance(c, Document | Mapping):
                uids.append(uid_of(c))
                extra.append(c)
            else:
                raise InputError("input.malformed", "a candidate is not a document")
        if not uids:
            return []
        requests = [
            {
                "principal": who_uid.to_json(),
                "action": act.to_json(),
                "resource": u.to_json(),
                "context": ctx,
            }
            for u in uids
        ]
        decisions = self._evaluate(requests, store.handle_for(who, uids, extra))
        kept: list[T] = []
        for cand, uid, decision in zip(candidates, uids, decisions, strict=True):
            self._record(decision, principal=who_uid, action=act, resource=uid, now=at, grant=live)
            if decision.allowed:
                kept.append(cand)
        return kept

    def grant_break_glass(
        self,
        user: Principal,
        patient: str | EntityUid,
        *,
        reason: str,
        entities: Entities = (),
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> Grant:
        """Authorize the ``break_glass`` action on ``patient``, then issue a time-boxed grant."""
        at = now if now is not None else (self._clock() if self._clock else None)
        if self.break_glass is None or at is None:
            raise InputError("config.invalid", "break-glass needs a grant store and a clock")
        patient_uid = EntityUid.parse(patient, default_type="Patient")
        store = self.store(entities)
        who = self._principal(user, store)
        who_uid = who.uid if isinstance(who, User) else who
        self.decide(who, "break_glass", patient_uid, entities=store, now=at).require()
        return self.break_glass.grant(user=who_uid, patient=patient_uid, reason=reason, now=at, ttl=ttl)


def as_entities(items: Sequence[Entity | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Cedar JSON for a list of typed entities (e.g. to write an entities file)."""
    return [as_cedar(e) for e in items]
