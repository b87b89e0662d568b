"""A hospital's access events, simulated from Synthea care relationships, with labelled misuse.

From the Synthea bundles (FHIR R4 transaction bundles) come the care relationships: each
Encounter names its patient, its practitioners and its service provider (the organization, here
a department), and how often each pair meets. A small set of bundles is scaled up: each bundle's
patient is a template (its departments, weighted by its encounters there), replicated into
``copies`` patients; each department's Synthea practitioner gets ``staff`` colleagues. Care
teams are drawn in each patient's departments, weighted like the template's encounters.

Normal behaviour, per user and working day: a Poisson number of patients (the user's own rate),
mostly their care team's (reason ``care_team``), some of their department's (``department``), a
rare emergency (``break_glass``); each opened one to three times minutes apart, during the user's
shift (day or night staff). Hours, rates and shares are the simulation's assumptions, stated
here, not Synthea's (its encounter times are not shift times).

Misuse, injected in the test days and labelled by scenario instance: snooping on a VIP, on a
coworker (a patient who works in the user's department), on a namesake; bulk export (well over
a hundred records within an hour, or every patient of a smaller hospital); after-hours
browsing; break-glass overuse.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from medclave.auth.access import AccessEvent, AccessReason
from medclave.monitor.model import Directory, Person

TENANT: Final = "synthea-general"
SCENARIOS: Final = ("vip", "coworker", "same_surname", "bulk_export", "after_hours",
                    "break_glass_overuse")
SURNAMES: Final = ("Abbott", "Baker", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Haddad",
                   "Ito", "Jensen", "Kowalski", "Lopez", "Moreau", "Nguyen", "Okafor", "Patel",
                   "Quinn", "Rossi", "Silva", "Tanaka", "Ueda", "Vargas", "Weber", "Yilmaz")


@dataclass(frozen=True)
class Template:
    """One Synthea patient's care relationships: departments and encounter counts there."""

    surname: str
    departments: dict[str, int]


def read_templates(folder: Path) -> list[Template]:
    """The care relationships of every bundle in ``folder`` (Encounter.serviceProvider)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        if bundle.get("resourceType") != "Bundle":
            continue
        resources = [e.get("resource", {}) for e in bundle.get("entry", [])]
        patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
        if patient is None:
            continue
        visits: Counter[str] = Counter()
        for r in resources:
            if r.get("resourceType") == "Encounter":
                ref = (r.get("serviceProvider") or {}).get("reference", "")
                if ref:
                    visits["dept-" + ref.rsplit("|", 1)[-1][:8]] += 1
        family = "".join(c for c in patient["name"][0]["family"] if c.isalpha())
        out.append(Template(family, dict(visits)))
    return out


@dataclass
class Hospital:
    directory: Directory
    care_teams: dict[str, list[str]]  # patient -> users
    patients_of: dict[str, list[tuple[str, float]]]  # user -> (patient, weight)
    department_patients: dict[str, list[str]]
    rate: dict[str, float]  # user -> mean patients per working day
    night: set[str] = field(default_factory=set)
    glass_rate: dict[str, float] = field(default_factory=dict)


def build_hospital(templates: list[Template], rng: random.Random, *, copies: int = 40,
                   staff: int = 5) -> Hospital:
    directory = Directory()
    departments = sorted({d for t in templates for d in t.departments})
    users_in: dict[str, list[str]] = {}
    for dept in departments:
        users_in[dept] = []
        for i in range(staff + 1):
            uid = f"u-{dept[5:]}-{i}"
            directory.users[uid] = Person(surname=rng.choice(SURNAMES), department=dept)
            users_in[dept].append(uid)
    care_teams: dict[str, list[str]] = {}
    patients_of: dict[str, list[tuple[str, float]]] = defaultdict(list)
    department_patients: dict[str, list[str]] = defaultdict(list)
    for t_index, template in enumerate(templates):
        main = max(template.departments, key=lambda d: template.departments[d])
        for copy in range(copies):
            pid = f"p-{t_index}-{copy:03d}"
            directory.patients[pid] = Person(surname=rng.choice(SURNAMES), department=main)
            team: list[str] = []
            for dept, visits in template.departments.items():
                members = rng.sample(users_in[dept], 2 if dept == main else 1)
                team += members
                for uid in members:
                    patients_of[uid].append((pid, float(visits)))
            care_teams[pid] = team
            department_patients[main].append(pid)
    users = sorted(directory.users)
    night = set(rng.sample(users, len(users) // 6))
    rate = {u: rng.uniform(6, 18) for u in users}
    glass = {u: rng.choice((0.0, 0.0, 0.02, 0.05)) for u in users}
    return Hospital(directory, care_teams, dict(patients_of), dict(department_patients), rate,
                    night, glass)


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: means here are small (tens).
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _shift_start(rng: random.Random, day: datetime, night: bool) -> datetime:
    hour = rng.uniform(19, 21) if night else rng.uniform(7, 9)
    return day + timedelta(hours=hour)


def normal_day(h: Hospital, user: str, day: datetime, rng: random.Random) -> list[AccessEvent]:
    own = h.patients_of.get(user, [])
    dept = h.directory.users[user].department
    pool = [p for p in h.department_patients.get(dept or "", []) if user not in h.care_teams[p]]
    start = _shift_start(rng, day, user in h.night)
    out = []
    for _ in range(max(1, _poisson(rng, h.rate[user]))):
        roll = rng.random()
        reason: AccessReason
        if roll < h.glass_rate.get(user, 0.0) / max(h.rate[user], 1) * 5:
            patient, reason = rng.choice(list(h.care_teams)), "break_glass"
        elif roll < 0.9 and own:
            patient = rng.choices([p for p, _ in own], [w for _, w in own])[0]
            reason = "care_team"
        elif pool:
            patient, reason = rng.choice(pool), "department"
        else:
            continue
        at = start + timedelta(minutes=rng.uniform(0, 600))
        for view in range(rng.randint(1, 3)):
            out.append(_event(h, user, patient, reason, at + timedelta(minutes=7 * view)))
    return out


def _event(h: Hospital, user: str, patient: str, reason: AccessReason, at: datetime
           ) -> AccessEvent:
    return AccessEvent(at=at, tenant=TENANT, user=user, patient=patient, reason=reason,
                       department=h.directory.patients[patient].department)


@dataclass
class Dataset:
    hospital: Hospital
    train: list[AccessEvent]
    test: list[tuple[AccessEvent, str | None]]  # (event, scenario instance or None)


def _misuse(h: Hospital, kind: str, user: str, day: datetime, rng: random.Random,
            tag: str) -> list[tuple[AccessEvent, str]]:
    directory = h.directory
    me = directory.users[user]
    dept = me.department or ""
    strangers = [p for p, t in h.care_teams.items() if user not in t]
    noon = day + timedelta(hours=rng.uniform(10, 15))
    if kind == "vip":
        patient = rng.choice([p for p in strangers if directory.patients[p].department == dept]
                             or strangers)
        directory.patients[patient] = replace(directory.patients[patient], vip=True)
        return [(_event(h, user, patient, "department", noon), tag)]
    if kind == "coworker":
        patient = rng.choice(strangers)
        directory.patients[patient] = replace(directory.patients[patient], employee_of=dept)
        return [(_event(h, user, patient, "department", noon), tag)]
    if kind == "same_surname":
        patient = rng.choice(strangers)
        directory.patients[patient] = replace(directory.patients[patient], surname=me.surname)
        return [(_event(h, user, patient, "department", noon), tag)]
    if kind == "bulk_export":
        chosen = rng.sample(list(h.care_teams), min(150, len(h.care_teams)))
        return [(_event(h, user, p, "care_team" if user in h.care_teams[p] else "department",
                        noon + timedelta(seconds=20 * i)), tag) for i, p in enumerate(chosen)]
    if kind == "after_hours":
        base = day + timedelta(hours=2 + rng.random())
        chosen = rng.sample(strangers, 5)
        return [(_event(h, user, p, "department", base + timedelta(minutes=6 * i)), tag)
                for i, p in enumerate(chosen)]
    chosen = rng.sample(strangers, 6)  # break-glass overuse
    return [(_event(h, user, p, "break_glass", noon + timedelta(minutes=25 * i)), tag)
            for i, p in enumerate(chosen)]


def simulate(fhir: Path, *, seed: int = 16, train_days: int = 28, test_days: int = 7,
             instances: int = 4, copies: int = 40, staff: int = 5) -> Dataset:
    rng = random.Random(seed)
    templates = read_templates(fhir)
    if not templates:
        raise ValueError(f"no FHIR bundles with a Patient in {fhir}")
    h = build_hospital(templates, rng, copies=copies, staff=staff)
    first = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    users = sorted(h.directory.users)
    train: list[AccessEvent] = []
    test: list[tuple[AccessEvent, str | None]] = []
    for d in range(train_days + test_days):
        day = first + timedelta(days=d)
        if day.weekday() >= 5:
            continue
        for user in users:
            for event in normal_day(h, user, day, rng):
                (train.append(event) if d < train_days
                 else test.append((event, None)))
    day_users = [u for u in users if u not in h.night and u in h.patients_of]
    for kind in SCENARIOS:
        for n in range(instances):
            day = first + timedelta(days=train_days + rng.randrange(test_days))
            while day.weekday() >= 5:
                day += timedelta(days=1)
            test += _misuse(h, kind, rng.choice(day_users), day, rng, f"{kind}-{n}")
    test.sort(key=lambda pair: pair[0].at)
    train.sort(key=lambda e: e.at)
    return Dataset(h, train, test)
