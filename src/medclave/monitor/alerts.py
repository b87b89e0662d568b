"""Alerts: raised when an event's score reaches the threshold, explained in words, deduplicated,
and delivered to a file (JSON lines, 0600) or a webhook (an HTTP POST of the same JSON).

Deduplication: one alert per (user, finding kind, patient) within ``window`` (a day by default)
for what concerns one patient (VIP, namesake, coworker, hour, outside the care team); one per
(user, kind, day) for what concerns volume (bulk export, bursts, break-glass overuse). Later
events under the same key are counted on the first alert's key but raise nothing new, so a
bulk export of 300 records is one alert, not 300.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx

from medclave.errors import InputError, ServiceError
from medclave.monitor.model import Score, Scorer

PER_USER_DAY: Final = frozenset({"volume", "burst", "break_glass"})
DEFAULT_THRESHOLD: Final = 4.0
PRUNE_AT: Final = 10_000  # dedup keys held before the expired ones are dropped


@dataclass(frozen=True)
class Alert:
    at: str
    user: str
    patient: str
    tenant: str
    kind: str
    score: float
    summary: str
    reasons: tuple[str, ...]
    request_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


AlertSink = Callable[[Alert], None]


def explain(score: Score) -> tuple[str, tuple[str, ...]]:
    """One summary line and every reason, strongest first, for the privacy officer."""
    ordered = sorted(score.findings, key=lambda f: -f.points)
    event = score.event
    summary = (f"Unusual access by {event.user} to patient {event.patient}'s record on "
               f"{event.at:%Y-%m-%d at %H:%M} ({event.purpose}): {ordered[0].why}.")
    return summary, tuple(f"{f.why} (+{f.points:.1f})" for f in ordered)


class Deduplicator:
    def __init__(self, window: timedelta = timedelta(days=1)) -> None:
        self.window = window
        self._last: dict[tuple[str, ...], datetime] = {}
        self._prune_at = PRUNE_AT
        self.suppressed = 0

    def key(self, score: Score) -> tuple[str, ...]:
        top = score.top
        kind = top.kind if top else "none"
        event = score.event
        if kind in PER_USER_DAY:
            return (event.user, kind, event.at.date().isoformat())
        return (event.user, kind, event.patient)

    def first(self, score: Score) -> bool:
        key, at = self.key(score), score.event.at
        last = self._last.get(key)
        if last is not None and at - last < self.window:
            self.suppressed += 1
            return False
        self._last[key] = at
        if len(self._last) > self._prune_at:
            # A follower runs for months: forget keys whose window has passed, so memory
            # follows the alerts of one window, not of all time.
            self._last = {k: t for k, t in self._last.items() if at - t < self.window}
            self._prune_at = max(PRUNE_AT, 2 * len(self._last))
        return True

    def state(self) -> dict[str, Any]:
        """The keys still inside the window (older ones can never suppress again)."""
        newest = max(self._last.values(), default=None)
        keep = {k: t for k, t in self._last.items()
                if newest is None or newest - t < self.window}
        return {"last": [[list(k), t.isoformat()] for k, t in keep.items()],
                "suppressed": self.suppressed}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self._last = {tuple(str(p) for p in k): datetime.fromisoformat(t)
                          for k, t in state.get("last", [])}
            self.suppressed = int(state.get("suppressed", 0))
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError("input.malformed", f"not a dedup state: {exc}") from None


class FileSink:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, alert: Alert) -> None:
        with self._lock:
            self._file.write(json.dumps(alert.to_dict(), sort_keys=True) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class WebhookSink:
    """POSTs each alert as JSON; a delivery that fails is ``service.alert_undelivered`` (the
    monitor stops rather than drop an alert)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise InputError("config.invalid", "the alert webhook must be https (or loopback)")
        self.url = url
        self._http = httpx.Client(timeout=timeout)

    def __call__(self, alert: Alert) -> None:
        try:
            response = self._http.post(self.url, json=alert.to_dict())
        except httpx.HTTPError as exc:
            raise ServiceError("service.alert_undelivered", f"webhook: {exc!r}") from None
        if response.status_code >= 300:
            raise ServiceError("service.alert_undelivered",
                               f"webhook answered {response.status_code}")

    def close(self) -> None:
        self._http.close()


class Monitor:
    """Scores each event; an event at or above ``threshold`` raises an alert unless one with
    the same key was raised within the dedup window."""

    def __init__(self, scorer: Scorer, *sinks: AlertSink, threshold: float = DEFAULT_THRESHOLD,
                 dedup: Deduplicator | None = None, keep: bool = True) -> None:
        self.scorer = scorer
        self.sinks = sinks
        self.threshold = threshold
        self.dedup = dedup or Deduplicator()
        # Every alert raised, for a batch run's summary; a follower that runs for months keeps
        # none (its sinks have them).
        self.raised: list[Alert] = []
        self._keep = keep

    def replay(self, event: Any) -> None:
        """Score ``event`` and count it for deduplication, raising nothing (the follower
        rebuilding its state up to an event whose alert failed)."""
        score = self.scorer.score(event)
        if score.total >= self.threshold and score.findings:
            self.dedup.first(score)

    def observe(self, event: Any) -> Alert | None:
        score = self.scorer.score(event)
        if score.total < self.threshold or not score.findings or not self.dedup.first(score):
            return None
        summary, reasons = explain(score)
        top = score.top
        assert top is not None
        alert = Alert(at=event.at.isoformat(), user=event.user, patient=event.patient,
                      tenant=event.tenant, kind=top.kind, score=round(score.total, 2),
                      summary=summary, reasons=reasons, request_id=event.request_id)
        for sink in self.sinks:
            sink(alert)
        if self._keep:
            self.raised.append(alert)
        return alert
