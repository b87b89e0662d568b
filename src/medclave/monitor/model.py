"""The directory, per-user baselines and the scorer.

Each user's baseline, learned from their past access events: patients per working day (mean and
spread), the hours they work (a smoothed histogram), the departments whose patients they open,
the share of their accesses outside their care team, their break-glass rate, and their busiest
ten minutes. A new event is scored by how far it departs from its user's baseline, plus what is
suspicious whatever the baseline (a VIP, a coworker or a namesake who is not the user's patient;
an access the authorizer could give no reason for). Each part of the score is kept with a plain
sentence for the privacy officer (:class:`Finding`).

Hand-written rather than a generic outlier model (isolation forest and the like): every alert
must say in words why it was raised, each part maps to a misuse pattern the literature on
EHR access auditing names (snooping on VIPs, coworkers and family; bulk export; after-hours
browsing; break-glass abuse), and a per-user baseline of a few counters is cheap to keep and to
explain. The weights are the simulation's (docs/monitoring.md says what was measured).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from medclave.auth.access import AccessEvent
from medclave.errors import InputError

INSIDE: Final = frozenset({"care_team", "self"})
BURST_WINDOW: Final = timedelta(minutes=10)


@dataclass(frozen=True)
class Person:
    surname: str
    department: str | None = None
    vip: bool = False
    employee_of: str | None = None  # a patient who works in this department (a coworker)


@dataclass
class Directory:
    """Who is who: users and patients by id (names only for the namesake check)."""

    users: dict[str, Person] = field(default_factory=dict)
    patients: dict[str, Person] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def side(people: dict[str, Person]) -> dict[str, Any]:
            return {k: vars(v) for k, v in people.items()}
        return {"users": side(self.users), "patients": side(self.patients)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Directory:
        try:
            return cls({k: Person(**v) for k, v in data.get("users", {}).items()},
                       {k: Person(**v) for k, v in data.get("patients", {}).items()})
        except TypeError as exc:
            raise InputError("input.malformed", f"not a monitor directory: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Directory:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


@dataclass
class UserBaseline:
    events: int = 0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    departments: dict[str, int] = field(default_factory=dict)
    outside: int = 0
    break_glass: int = 0
    days: int = 0
    patients_per_day: list[int] = field(default_factory=list)
    busiest_burst: int = 0

    @property
    def mean_patients(self) -> float:
        return statistics.fmean(self.patients_per_day) if self.patients_per_day else 0.0

    @property
    def spread_patients(self) -> float:
        per_day = self.patients_per_day
        return statistics.pstdev(per_day) if len(per_day) > 1 else 0.0


@dataclass
class Baselines:
    users: dict[str, UserBaseline] = field(default_factory=dict)

    @classmethod
    def learn(cls, events: Iterable[AccessEvent]) -> Baselines:
        out = cls()
        per_day: dict[str, dict[date, set[str]]] = defaultdict(lambda: defaultdict(set))
        recent: dict[str, deque[datetime]] = defaultdict(deque)
        for event in sorted(events, key=lambda e: e.at):
            b = out.users.setdefault(event.user, UserBaseline())
            b.events += 1
            b.hours[event.at.hour] += 1
            if event.department:
                b.departments[event.department] = b.departments.get(event.department, 0) + 1
            b.outside += event.reason not in INSIDE
            b.break_glass += event.reason == "break_glass"
            per_day[event.user][event.at.date()].add(event.patient)
            window = recent[event.user]
            window.append(event.at)
            while event.at - window[0] > BURST_WINDOW:
                window.popleft()
            b.busiest_burst = max(b.busiest_burst, len(window))
        for user, days in per_day.items():
            b = out.users[user]
            b.days = len(days)
            b.patients_per_day = [len(p) for _, p in sorted(days.items())]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {u: vars(b) for u, b in self.users.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baselines:
        try:
            return cls({u: UserBaseline(**b) for u, b in data.items()})
        except TypeError as exc:
            raise InputError("input.malformed", f"not monitor baselines: {exc}") from None


@dataclass(frozen=True)
class Finding:
    kind: str
    points: float
    why: str


@dataclass(frozen=True)
class Score:
    event: AccessEvent
    total: float
    findings: tuple[Finding, ...]

    @property
    def top(self) -> Finding | None:
        return max(self.findings, key=lambda f: f.points, default=None)


def _clamp(value: float, high: float) -> float:
    return max(0.0, min(high, value))


class Scorer:
    """Scores events in time order against the baselines, keeping each user's day so far."""

    def __init__(self, baselines: Baselines, directory: Directory) -> None:
        self.baselines = baselines
        self.directory = directory
        self._today: dict[str, tuple[date, set[str], int]] = {}
        self._recent: dict[str, deque[datetime]] = defaultdict(deque)

    def score(self, event: AccessEvent) -> Score:
        b = self.baselines.users.get(event.user) or UserBaseline()
        user = self.directory.users.get(event.user)
        patient = self.directory.patients.get(event.patient)
        who = event.user
        found: list[Finding] = []
        inside = event.reason in INSIDE

        # The hour: how rarely this user works at it (Laplace-smoothed), above a flat day.
        p_hour = (b.hours[event.at.hour] + 0.5) / (b.events + 12.0)
        rare = _clamp(-math.log(p_hour) - math.log(24), 4.0)
        if rare > 0.5 and not inside:
            found.append(Finding("hour", rare, f"{who} opened this record at "
                                 f"{event.at:%H:%M}, an hour at which they made "
                                 f"{b.hours[event.at.hour]} of their {b.events} accesses in "
                                 "the baseline period"))
        if not inside:
            share = b.outside / b.events if b.events else 0.0
            points = 2.0 * (1.0 - min(1.0, 4 * share))
            if event.reason == "other":
                found.append(Finding("unexplained", 5.0, "the authorizer gave no care-team, "
                                     "consent or emergency reason for this access"))
            elif points > 0.3:
                found.append(Finding("outside_care_team", points, f"the patient is not on "
                                     f"{who}'s care team (allowed as: {event.reason}); "
                                     f"{share:.0%} of their baseline accesses were outside "
                                     "their care team"))
        if event.department and b.events and event.department not in b.departments \
                and not inside:
            found.append(Finding("department", 1.5, f"{who} had not opened a record of "
                                 f"department {event.department} before"))
        if patient is not None and not inside:
            if patient.vip:
                found.append(Finding("vip", 4.0, f"the patient is flagged VIP and {who} is "
                                     "not on their care team"))
            if user is not None and patient.surname.lower() == user.surname.lower():
                found.append(Finding("same_surname", 4.0, f"the patient shares {who}'s "
                                     f"surname ({user.surname}) and {who} is not on their "
                                     "care team"))
            if user is not None and patient.employee_of is not None \
                    and patient.employee_of == user.department:
                found.append(Finding("coworker", 4.0, f"the patient works in {who}'s own "
                                     f"department ({user.department}) and {who} is not on "
                                     "their care team"))
        day, seen, glass = self._today.get(who, (event.at.date(), set(), 0))
        if day != event.at.date():
            day, seen, glass = event.at.date(), set(), 0
        new_patient = event.patient not in seen
        seen.add(event.patient)
        if event.reason == "break_glass":
            glass += 1
            usual = b.break_glass / b.days if b.days else 0.0
            points = _clamp(1.0 + glass - 2 * usual - 1, 5.0) + (1.0 if usual < 0.05 else 0.0)
            found.append(Finding("break_glass", points, f"emergency (break-glass) access, "
                                 f"{who}'s {glass} today; they averaged {usual:.2f} a day in "
                                 "the baseline"))
        self._today[who] = (day, seen, glass)
        if new_patient and b.days:
            z = (len(seen) - b.mean_patients) / max(b.spread_patients, 1.0)
            if z > 2.0:
                found.append(Finding("volume", _clamp(z - 2.0, 6.0), f"{who} has opened "
                                     f"{len(seen)} patients' records today; their usual is "
                                     f"{b.mean_patients:.0f} ± {b.spread_patients:.0f} a day"))
        window = self._recent[who]
        window.append(event.at)
        while event.at - window[0] > BURST_WINDOW:
            window.popleft()
        if b.events and len(window) > max(b.busiest_burst, 3) * 1.5:
            excess = len(window) / max(b.busiest_burst, 1)
            found.append(Finding("burst", _clamp(excess - 1.5, 5.0), f"{who} made "
                                 f"{len(window)} accesses in ten minutes; their busiest ten "
                                 f"minutes in the baseline had {b.busiest_burst}"))
        return Score(event, sum(f.points for f in found), tuple(found))

    def state(self) -> dict[str, Any]:
        """Each user's day so far and last ten minutes (what :meth:`score` carries from one
        event to the next), as JSON, so a follower restarted mid-day scores on from it."""
        return {"today": {u: [d.isoformat(), sorted(seen), glass]
                          for u, (d, seen, glass) in self._today.items()},
                "recent": {u: [t.isoformat() for t in w] for u, w in self._recent.items() if w}}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self._today = {u: (date.fromisoformat(d), set(seen), int(glass))
                           for u, (d, seen, glass) in state.get("today", {}).items()}
            self._recent = defaultdict(deque, {
                u: deque(datetime.fromisoformat(t) for t in times)
                for u, times in state.get("recent", {}).items()})
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError("input.malformed", f"not a scorer state: {exc}") from None


def counts(events: Iterable[AccessEvent]) -> Counter[str]:
    return Counter(e.reason for e in events)
