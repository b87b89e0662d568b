"""Access events: every access to a patient's data, with the reason it was allowed.

Retrieval, the scribe and conversations (the parts that read a patient's record) emit one
:class:`AccessEvent` per patient they touch, after the authorizer has allowed it, through an
:class:`AccessEmitter`; the monitor (:mod:`medclave.monitor`) learns each user's normal access
from them and raises alerts on what is unexplained (issue 16).

The reason comes from the authorizer's decision: the ``@id`` of the Cedar policies that permitted
it (:data:`REASONS_BY_POLICY`), so it says *why* the access was allowed, not what the caller
claimed: ``care_team`` (the user treats the patient), ``self`` (the patient's own record),
``consent`` (the patient's consent directive allowed it), ``break_glass`` (an emergency grant),
``department`` (the patient is in the user's department, not on their care team),
``deidentified`` (a researcher's de-identified view). An access permitted by none of these is
``other``, and the monitor treats it as unexplained.

Events carry identifiers (user, patient, tenant, department): they are PHI-bearing records for
the privacy officer's monitor, written to its own sink (a JSON-lines file, mode 0600), never to
the service log or a metric.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args

from medclave.errors import InputError

AccessReason = Literal["care_team", "self", "consent", "break_glass", "department",
                       "deidentified", "other"]
REASONS: Final[tuple[str, ...]] = get_args(AccessReason)
Purpose = Literal["retrieval", "scribe", "conversation", "export"]

# Cedar policy @id (auth/policies) -> the reason an access was allowed. A permit whose policy is
# not listed here is "other": adding a permitting policy means deciding its reason.
REASONS_BY_POLICY: Final[dict[str, AccessReason]] = {
    "clinician-care-team-retrieve": "care_team",
    "clinician-care-team-history": "care_team",
    "patient-own-documents": "self",
    "patient-own-history": "self",
    "clinician-break-glass-documents": "break_glass",
    "clinician-break-glass-history": "break_glass",
    "researcher-deidentified-documents": "deidentified",
}
# Break-glass outranks everything (it is what the privacy officer must see), then the
# narrowest relationship.
_PRIORITY: Final[tuple[AccessReason, ...]] = ("break_glass", "self", "care_team", "consent",
                                              "department", "deidentified")


def reason_of(policy_ids: Iterable[str]) -> AccessReason:
    """The reason an allowed decision gives, from the ids of the policies that permitted it."""
    found = {REASONS_BY_POLICY[p] for p in policy_ids if p in REASONS_BY_POLICY}
    return next((r for r in _PRIORITY if r in found), "other")


@dataclass(frozen=True, kw_only=True)
class AccessEvent:
    at: datetime
    tenant: str
    user: str
    patient: str
    reason: AccessReason
    purpose: Purpose = "retrieval"
    department: str | None = None  # the patient's department where the record says it
    request_id: str | None = None

    def __post_init__(self) -> None:
        # Events are read back from files (the monitor): every field's type is checked here,
        # so a wrong one is input.malformed, not a failure deep in the scorer.
        for name in ("tenant", "user", "patient", "reason", "purpose"):
            if not isinstance(getattr(self, name), str):
                raise InputError("input.malformed", f"an access event's {name} must be text")
        for name in ("department", "request_id"):
            if not isinstance(getattr(self, name), str | None):
                raise InputError("input.malformed", f"an access event's {name} must be text")
        if not isinstance(self.at, datetime):
            raise InputError("input.malformed", "an access event's time must be a time")
        if self.at.tzinfo is None:
            raise InputError("input.malformed", "an access event's time needs a time zone")
        if self.reason not in REASONS:
            raise InputError("input.malformed", f"unknown access reason {self.reason!r}")
        if self.purpose not in get_args(Purpose):
            raise InputError("input.malformed", f"unknown access purpose {self.purpose!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccessEvent:
        try:
            fields = dict(data)
            fields["at"] = datetime.fromisoformat(str(fields["at"]))
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("input.malformed", f"not an access event: {exc}") from None


AccessSink = Callable[[AccessEvent], None]


class AccessEmitter:
    """Where access events go: every registered sink, in order. A failing sink is not
    swallowed: an access that cannot be recorded must not pass unnoticed (the caller refuses)."""

    def __init__(self, *sinks: AccessSink) -> None:
        self._sinks = list(sinks)
        self._lock = threading.Lock()

    def add(self, sink: AccessSink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def emit(self, event: AccessEvent) -> None:
        with self._lock:
            sinks = tuple(self._sinks)
        for sink in sinks:
            sink(event)

    def allowed(self, *, at: datetime, tenant: str, user: str, patient: str,
                policy_ids: Iterable[str], purpose: Purpose = "retrieval",
                department: str | None = None, request_id: str | None = None) -> AccessEvent:
        """Emit the event for an access the authorizer allowed (``policy_ids``: its reasons)."""
        event = AccessEvent(at=at, tenant=tenant, user=user, patient=patient,
                            reason=reason_of(policy_ids), purpose=purpose,
                            department=department, request_id=request_id)
        self.emit(event)
        return event


class JsonlAccessLog:
    """A sink appending one JSON object per event to a file created 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def __call__(self, event: AccessEvent) -> None:
        line = json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


MAX_EVENT_LINE = 4096


def read_events(path: Path) -> Iterator[AccessEvent]:
    """Events from a JSON-lines file, each line bounded; ``input.malformed`` names the line."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if len(line) > MAX_EVENT_LINE:
                raise InputError("input.too_large", f"{path.name}:{number}: line too long")
            try:
                data = json.loads(line)
            except ValueError:
                raise InputError("input.malformed", f"{path.name}:{number}: not JSON") from None
            if not isinstance(data, dict):
                raise InputError("input.malformed", f"{path.name}:{number}: not an object")
            yield AccessEvent.from_dict(data)
