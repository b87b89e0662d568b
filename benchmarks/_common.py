"""Helpers the benchmark modules share (the runner skips modules starting with ``_``).

Methodology (issue 10). On a shared 2-core machine one baseline run followed by one candidate
run gave ratios from 0.83 to 2.9 for the same code: whatever else runs shifts from one run to
the next. So every benchmark measures its baseline and its candidates in alternating rounds
(:func:`interleave`, at least :data:`MIN_ROUNDS`; the order flips every round, so a steady
drift weighs on both sides alike), takes each round's ratio (candidate / baseline, the same
round), and reports the median ratio with its spread, the min-max of the per-round ratios. A
figure whose rounds stray more than ±10% (:data:`NOISE`) from their median is marked *noisy*
and no goal is called met or missed on it.

:class:`Report` prints one uniform table per benchmark (value, ratio against the baseline with
its min-max, verdict against the goal if there is one) and keeps a machine-readable copy, which
``python -m benchmarks`` writes to ``$MEDCLAVE_BENCH_OUT`` (see :func:`write_results`):
``{"meta": {...}, "benchmarks": [{"benchmark", "title", "rounds", "rows": [{"name", "unit",
"baseline", "against", "value": {"median", "min", "max", "spread", "noisy", "rounds"},
"ratio": {same} or null, "goal": {"op", "target", "on"} or null, "verdict", "note"}],
"ratios": [...], "notes": [...]}]}``. A row's ratio is its value over the baseline row named
in ``against``, round by round; ``verdict`` is "met", "missed", "noisy" or null (no goal).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

MIN_ROUNDS = 5
NOISE = 0.10  # a figure whose rounds stray further than this from their median is noisy
_EPSILON = 1e-9  # so that a round exactly 10% off (1.1 / 1.0 in binary floats) is not noisy

RESULTS: list[dict[str, Any]] = []  # every emitted report of this process, for write_results


def vectors_dir() -> Path:
    """MEDCLAVE_VECTORS, else ../shared/vectors beside the repository, read in place."""
    env = os.environ.get("MEDCLAVE_VECTORS")
    here = Path(__file__).resolve().parent.parent
    return Path(env) if env else here.parent / "shared" / "vectors"


def env_int(name: str, default: int, *, minimum: int = 1) -> int:
    """An integer setting from the environment (counts, sizes), refused below ``minimum``."""
    value = int(os.environ.get(name, str(default)))
    if value < minimum:
        raise ValueError(f"{name}={value}: at least {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    value = float(os.environ.get(name, str(default)))
    if not value > 0:
        raise ValueError(f"{name}={value}: must be positive")
    return value


def rounds() -> int:
    """MEDCLAVE_BENCH_ROUNDS (default and minimum 5): rounds of every interleaved figure."""
    return env_int("MEDCLAVE_BENCH_ROUNDS", MIN_ROUNDS, minimum=MIN_ROUNDS)


# --- measuring -------------------------------------------------------------------------------


def rate(fn: Callable[[], object], n: int) -> float:
    """Calls per second over ``n`` calls, after one warm-up call (imports, first-use caches)."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def rate_for(fn: Callable[[], object], seconds: float, *, minimum: int = 20,
             batch: int = 1) -> float:
    """Calls per second over at least ``seconds`` and ``minimum`` calls, after one warm-up;
    the clock is read every ``batch`` calls (cheap calls: so it does not weigh on them)."""
    fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < minimum:
        for _ in range(batch):
            fn()
        count += batch
    return count / elapsed


def timings(fn: Callable[[], object], n: int) -> list[float]:
    """Wall-clock seconds of each of ``n`` calls (no warm-up: callers decide)."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def interleave(measures: Mapping[str, Callable[[], float]], n_rounds: int | None = None
               ) -> dict[str, tuple[float, ...]]:
    """Run every measure once per round, forward in even rounds and backward in odd ones
    (A B, B A, A B, ...), and return each one's per-round values, in round order.

    Each measure returns one figure for its round (a rate, a median latency, ...); the first
    one is by convention the baseline. Warm-up is the measures' own business.
    """
    count = rounds() if n_rounds is None else n_rounds
    if count < MIN_ROUNDS:
        raise ValueError(f"{count} rounds: at least {MIN_ROUNDS}")
    names = list(measures)
    values: dict[str, list[float]] = {name: [] for name in names}
    for i in range(count):
        for name in names if i % 2 == 0 else reversed(names):
            values[name].append(float(measures[name]()))
    return {name: tuple(v) for name, v in values.items()}


# --- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Per-round values of one figure: median, min-max, and how far the rounds stray."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no rounds")
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def spread(self) -> float:
        """The furthest round's distance from the median, as a fraction of the median."""
        median = self.median
        furthest = max(median - self.low, self.high - median)
        if furthest == 0:
            return 0.0
        return math.inf if median == 0 else furthest / abs(median)

    @property
    def noisy(self) -> bool:
        return self.spread > NOISE + _EPSILON

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high,
                "spread": self.spread,
                "noisy": self.noisy, "rounds": list(self.values)}


def ratios(candidate: Sequence[float], baseline: Sequence[float]) -> Spread:
    """Each round's candidate / baseline (the same round's two values)."""
    if len(candidate) != len(baseline):
        raise ValueError("candidate and baseline have different numbers of rounds")
    return Spread.of([c / b for c, b in zip(candidate, baseline, strict=True)])


@dataclass(frozen=True)
class Comparison:
    baseline: Spread
    candidate: Spread
    ratio: Spread  # per-round candidate / baseline

    @property
    def noisy(self) -> bool:
        return self.ratio.noisy


def compare(baseline: Sequence[float], candidate: Sequence[float]) -> Comparison:
    return Comparison(Spread.of(baseline), Spread.of(candidate), ratios(candidate, baseline))


def interleaved(baseline: Callable[[], float], candidate: Callable[[], float],
                n_rounds: int | None = None) -> Comparison:
    """One candidate against its baseline in alternating rounds."""
    got = interleave({"baseline": baseline, "candidate": candidate}, n_rounds)
    return compare(got["baseline"], got["candidate"])


@dataclass(frozen=True)
class Goal:
    """``value op target`` (on the figure itself) or ``ratio op target`` (on its ratio)."""

    op: Literal[">=", "<="]
    target: float
    on: Literal["value", "ratio"] = "value"

    def met_by(self, x: float) -> bool:
        return x >= self.target if self.op == ">=" else x <= self.target

    def text(self, unit: str) -> str:
        what = "ratio " if self.on == "ratio" else ""
        tail = "" if self.on == "ratio" else f" {unit}"
        return f"{what}{self.op} {fmt(self.target)}{tail}"


def verdict(series: Spread, goal: Goal | None) -> str:
    """``noisy`` when the rounds stray over ±10%; else ``met``/``missed`` (``""``: no goal)."""
    if series.noisy:
        return "noisy"
    if goal is None:
        return ""
    return "met" if goal.met_by(series.median) else "missed"


# --- reporting -------------------------------------------------------------------------------


def fmt(x: float) -> str:
    """A figure to about three significant digits, thousands separated."""
    if math.isnan(x) or math.isinf(x):
        return str(x)
    size = abs(x)
    if size >= 100:
        return f"{x:,.0f}"
    if size >= 10:
        return f"{x:.1f}"
    if size >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    value: Spread
    ratio: Spread | None  # None: a baseline, or a figure with nothing to compare it with
    goal: Goal | None
    note: str
    is_baseline: bool = False
    against: str | None = None  # the baseline row the ratio is against

    @property
    def judged(self) -> Spread:
        """What the verdict is on: the goal's quantity, else the ratio, else the value."""
        if self.goal is not None and self.goal.on == "value":
            return self.value
        if self.ratio is not None:
            return self.ratio
        return self.value

    @property
    def verdict(self) -> str:
        return verdict(self.judged, self.goal)

    def verdict_text(self) -> str:
        word = self.verdict
        judged = self.judged
        if word == "noisy":
            text = f"noisy (±{_pct(judged.spread)})"
            if self.goal is not None:
                meeting = sum(self.goal.met_by(v) for v in judged.values)
                text += f"; {meeting}/{len(judged.values)} rounds {self.goal.text(self.unit)}"
            return text
        return f"{word} ({self.goal.text(self.unit)})" if self.goal is not None else ""

    def as_json(self) -> dict[str, Any]:
        goal = None if self.goal is None else {"op": self.goal.op, "target": self.goal.target,
                                               "on": self.goal.on}
        return {"name": self.name, "unit": self.unit, "baseline": self.is_baseline,
                "against": self.against,
                "value": self.value.as_json(),
                "ratio": None if self.ratio is None else self.ratio.as_json(),
                "goal": goal, "verdict": self.verdict or None, "note": self.note}


class Report:
    """One benchmark's table: rows of per-round figures, printed alike and kept for JSON."""

    def __init__(self, benchmark: str, title: str) -> None:
        self.benchmark = benchmark
        self.title = title
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.extra: list[dict[str, Any]] = []
        self.n_rounds = 0

    def baseline(self, name: str, values: Sequence[float], unit: str, note: str = "") -> None:
        self._add(Row(name, unit, Spread.of(values), None, None, note, is_baseline=True))

    def row(self, name: str, values: Sequence[float], unit: str, *,
            baseline: Sequence[float] | None = None, goal: Goal | None = None,
            note: str = "") -> None:
        """A figure; with ``baseline`` (the same rounds' baseline values) also its ratio."""
        ratio = None if baseline is None else ratios(values, baseline)
        if goal is not None and goal.on == "ratio" and ratio is None:
            raise ValueError(f"{name}: a goal on the ratio needs a baseline")
        against = None if baseline is None else next(
            (r.name for r in reversed(self.rows)
             if r.is_baseline and r.value.values == tuple(float(v) for v in baseline)), None)
        self._add(Row(name, unit, Spread.of(values), ratio, goal, note, against=against))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def ratio_note(self, label: str, candidate: Sequence[float], baseline: Sequence[float]
                   ) -> None:
        """A ratio between two rows other than the baseline, as a line under the table."""
        r = ratios(candidate, baseline)
        self.extra.append({"name": label, "ratio": r.as_json()})
        flag = ", noisy" if r.noisy else ""
        self.notes.append(f"{label}: {fmt(r.median)}x ({fmt(r.low)}-{fmt(r.high)}, "
                          f"±{_pct(r.spread)}{flag})")

    def _add(self, row: Row) -> None:
        self.n_rounds = max(self.n_rounds, len(row.value.values))
        self.rows.append(row)

    def lines(self) -> list[str]:
        width = max([len("measure")] + [len(r.name) for r in self.rows])
        head = (f"{'measure':<{width}}  {'median':>10} {'unit':<8}{'±':>6}  "
                f"{'ratio':>7} {'min-max':<15} verdict")
        out = [f"{self.title} ({self.n_rounds} rounds; ratio = value / baseline, same round)",
               head]
        for r in self.rows:
            value = f"{fmt(r.value.median):>10} {r.unit:<8}{_pct(r.value.spread):>6}"
            if r.is_baseline:
                ratio = f"{'1':>7} {'(baseline)':<15}"
            elif r.ratio is None:
                ratio = f"{'':>7} {'':<15}"
            else:
                ratio = (f"{fmt(r.ratio.median):>7} "
                         f"{fmt(r.ratio.low) + '-' + fmt(r.ratio.high):<15}")
            tail = "  ".join(t for t in (r.verdict_text(), r.note) if t)
            out.append(f"{r.name:<{width}}  {value}  {ratio} {tail}".rstrip())
        out.extend(self.notes)
        return out

    def emit(self) -> None:
        """Print the table and keep it for :func:`write_results`."""
        print("\n".join(self.lines()), flush=True)
        RESULTS.append({"benchmark": self.benchmark, "title": self.title,
                        "rounds": self.n_rounds, "noise_threshold": NOISE,
                        "rows": [r.as_json() for r in self.rows], "ratios": self.extra,
                        "notes": self.notes})


def _pct(spread: float) -> str:
    if math.isinf(spread):
        return "inf"
    # more digits near the line: a noisy 10.04% must not read as a quiet "10%"
    return f"{spread:.2%}" if 0.095 <= spread < 0.105 else f"{spread:.0%}"


def write_results(path: Path, meta: Mapping[str, Any]) -> None:
    """Every report emitted in this process, with ``meta``, as one JSON document."""
    document = _finite({"meta": dict(meta), "benchmarks": RESULTS})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(obj: Any) -> Any:
    """NaN and infinities as null: JSON has neither."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
