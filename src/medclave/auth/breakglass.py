"""Break-glass: emergency access a clinician asks for, states a reason for, and is watched doing.

A grant is for one user and one patient, expires after at most ``max_ttl``, and is refused with
``auth.break_glass_expired`` afterwards. Granting it and every use of it produce a
:class:`BreakGlassEvent` that goes to the ``alert`` callback (page the privacy officer, write the
audit log); the ``medclave.auth.breakglass`` logger gets a WARNING with the stable event name and
the grant id only (no patient, no reason: those are PHI, for the alert channel).
Authorization itself stays in Cedar (``policies/break_glass.cedar``): the grant only puts
``context.break_glass`` into requests, after this store has checked it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from medclave.auth.entities import EntityUid
from medclave.errors import AuthError, InputError

logger = logging.getLogger("medclave.auth.breakglass")

EVENT_GRANTED: Final = "auth.break_glass.granted"
EVENT_USED: Final = "auth.break_glass.used"
EVENT_REFUSED: Final = "auth.break_glass.refused"
EventName = Literal["auth.break_glass.granted", "auth.break_glass.used", "auth.break_glass.refused"]

MAX_REASON: Final = 1000


@dataclass(frozen=True, kw_only=True)
class Grant:
    id: str
    user: EntityUid
    patient: EntityUid
    reason: str
    granted_at: datetime
    expires_at: datetime

    def context(self) -> dict[str, Any]:
        """``context.break_glass`` as the schema types it."""
        return {
            "user": self.user.ref(),
            "patient": self.patient.ref(),
            "expires_at": int(self.expires_at.timestamp()),
            "grant": self.id,
        }


@dataclass(frozen=True, kw_only=True)
class BreakGlassEvent:
    event: EventName
    grant_id: str
    user: str
    patient: str
    at: datetime
    reason: str
    action: str | None = None
    resource: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "grant_id": self.grant_id,
            "user": self.user,
            "patient": self.patient,
            "at": self.at.isoformat(),
            "reason": self.reason,
            "action": self.action,
            "resource": self.resource,
            "detail": self.detail,
        }


AlertSink = Callable[[BreakGlassEvent], None]


class BreakGlass:
    """In-memory grant store. Keeps the last ``history`` events for inspection; the durable
    record is whatever ``alert`` writes (the audit log)."""

    def __init__(
        self,
        *,
        max_ttl: timedelta = timedelta(hours=1),
        alert: AlertSink | None = None,
        min_reason_length: int = 8,
        history: int = 10_000,
    ) -> None:
        if not timedelta(0) < max_ttl <= timedelta(hours=24):
            raise InputError("config.invalid", "break-glass max_ttl must be within 24 hours")
        self._max_ttl = max_ttl
        self._alert = alert
        self._min_reason = min_reason_length
        self._grants: dict[str, Grant] = {}
        self._events: deque[BreakGlassEvent] = deque(maxlen=history)
        self._lock = threading.Lock()

    def _emit(self, event: BreakGlassEvent) -> None:
        self._events.append(event)
        # The log line names the event and its random grant id only: the patient and the
        # free-text reason are PHI and go to the alert channel (``alert``), not the log.
        logger.warning("%s grant=%s", event.event, event.grant_id)
        if self._alert is not None:
            self._alert(event)

    def events(self) -> tuple[BreakGlassEvent, ...]:
        return tuple(self._events)

    def grant(
        self,
        *,
        user: EntityUid,
        patient: EntityUid,
        reason: str,
        now: datetime,
        ttl: timedelta | None = None,
    ) -> Grant:
        """Issue a grant; callers authorize the ``break_glass`` action first (see Authorizer)."""
        text = " ".join(reason.split()) if isinstance(reason, str) else ""
        if len(text) < self._min_reason:
            raise AuthError(
                "auth.break_glass_reason_missing",
                f"state the clinical reason (at least {self._min_reason} characters)",
            )
        if len(text) > MAX_REASON or not text.isprintable():
            raise InputError("input.malformed", "the reason is too long or not plain text")
        if now.tzinfo is None:
            raise InputError("config.invalid", "times must be timezone-aware")
        span = min(ttl or self._max_ttl, self._max_ttl)
        if span <= timedelta(0):
            raise InputError("input.malformed", "a break-glass grant needs a positive duration")
        grant = Grant(
            id=secrets.token_urlsafe(16),
            user=user,
            patient=patient,
            reason=text,
            granted_at=now,
            expires_at=now + span,
        )
        with self._lock:
            # Forget grants long past expiry so the store stays small.
            for gid in [g.id for g in self._grants.values() if g.expires_at + span < now]:
                del self._grants[gid]
            self._grants[grant.id] = grant
        self._emit(
            BreakGlassEvent(
                event=EVENT_GRANTED,
                grant_id=grant.id,
                user=str(user),
                patient=str(patient),
                at=now,
                reason=text,
                detail=f"expires {grant.expires_at.isoformat()}",
            )
        )
        return grant

    def check(self, grant_id: str, *, user: EntityUid, now: datetime) -> Grant:
        """The live grant ``grant_id`` of ``user``; ``auth.break_glass_expired`` once past."""
        with self._lock:
            grant = self._grants.get(grant_id)
        if grant is None or grant.user != user:
            # Unknown and someone else's look the same to the caller.
            raise AuthError("auth.forbidden", "no such break-glass grant for this user")
        if now >= grant.expires_at:
            self._emit(
                BreakGlassEvent(
                    event=EVENT_REFUSED,
                    grant_id=grant.id,
                    user=str(user),
                    patient=str(grant.patient),
                    at=now,
                    reason=grant.reason,
                    detail=f"expired at {grant.expires_at.isoformat()}",
                )
            )
            raise AuthError(
                "auth.break_glass_expired", f"the grant expired at {grant.expires_at.isoformat()}"
            )
        return grant

    def record_use(self, grant: Grant, *, action: str, resource: str, now: datetime) -> BreakGlassEvent:
        event = BreakGlassEvent(
            event=EVENT_USED,
            grant_id=grant.id,
            user=str(grant.user),
            patient=str(grant.patient),
            at=now,
            reason=grant.reason,
            action=action,
            resource=resource,
        )
        self._emit(event)
        return event
