"""The monitor's evaluation on simulated data (:mod:`medclave.monitor.simulate`).

Learn the baselines on the training days, score every test event in time order, then report:

* AUROC of the event scores, misuse events against normal ones (scikit-learn);
* the threshold that alerts on 1% of normal events, and at it the recall of misuse scenario
  instances (an instance counts as caught when any of its events scores above the threshold)
  and of misuse events;
* the time from an instance's first event to its first event above the threshold (simulated
  time: how much of a bulk export happens before the alert), and the scoring time per event
  (wall clock, this machine);
* what the deduplicating monitor raises at that threshold, with one explained alert per
  scenario for the privacy officer.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from medclave.monitor.alerts import Alert, Monitor
from medclave.monitor.model import Baselines, Scorer
from medclave.monitor.simulate import Dataset


@dataclass
class Evaluation:
    events_train: int
    events_test: int
    misuse_events: int
    instances: int
    auroc: float
    threshold: float
    normal_alert_rate: float
    recall_instances: float
    recall_events: float
    per_scenario: dict[str, float]
    delay_seconds_median: float
    delay_seconds_max: float
    scoring_us_per_event: float
    alerts_raised: int
    alerts_on_misuse: int
    suppressed: int
    examples: dict[str, Alert] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["examples"] = {k: a.to_dict() for k, a in self.examples.items()}
        return out


def evaluate(data: Dataset, *, alert_rate: float = 0.01) -> Evaluation:
    from sklearn.metrics import roc_auc_score

    baselines = Baselines.learn(data.train)
    scorer = Scorer(baselines, data.hospital.directory)
    started = time.perf_counter()
    totals = [scorer.score(event).total for event, _ in data.test]
    per_event_us = (time.perf_counter() - started) / max(1, len(data.test)) * 1e6
    labels = [tag is not None for _, tag in data.test]
    normal = sorted(t for t, bad in zip(totals, labels, strict=True) if not bad)
    # The threshold above which at most alert_rate of normal events score.
    threshold = normal[min(len(normal) - 1, math.ceil((1 - alert_rate) * len(normal)) - 1)]
    normal_rate = sum(t > threshold for t in normal) / len(normal)
    first: dict[str, float] = {}
    caught: dict[str, float] = {}
    for (event, tag), total in zip(data.test, totals, strict=True):
        if tag is None:
            continue
        at = event.at.timestamp()
        first.setdefault(tag, at)
        if total > threshold and tag not in caught:
            caught[tag] = at - first[tag]
    scenarios = sorted({tag.rsplit("-", 1)[0] for tag in first})
    per_scenario = {s: sum(1 for t in caught if t.rsplit("-", 1)[0] == s)
                    / sum(1 for t in first if t.rsplit("-", 1)[0] == s) for s in scenarios}
    misuse = [t for t, bad in zip(totals, labels, strict=True) if bad]
    delays = list(caught.values()) or [math.nan]

    # The deployed shape: the deduplicating monitor at that threshold (strictly above it).
    monitor = Monitor(Scorer(baselines, data.hospital.directory),
                      threshold=math.nextafter(threshold, math.inf))
    examples: dict[str, Alert] = {}
    on_misuse = 0
    for event, tag in data.test:
        alert = monitor.observe(event)
        if alert is not None and tag is not None:
            on_misuse += 1
            examples.setdefault(tag.rsplit("-", 1)[0], alert)
    return Evaluation(
        events_train=len(data.train), events_test=len(data.test), misuse_events=len(misuse),
        instances=len(first), auroc=float(roc_auc_score(labels, totals)), threshold=threshold,
        normal_alert_rate=normal_rate, recall_instances=len(caught) / len(first),
        recall_events=sum(t > threshold for t in misuse) / len(misuse),
        per_scenario=per_scenario, delay_seconds_median=statistics.median(delays),
        delay_seconds_max=max(delays), scoring_us_per_event=per_event_us,
        alerts_raised=len(monitor.raised), alerts_on_misuse=on_misuse,
        suppressed=monitor.dedup.suppressed, examples=examples)
