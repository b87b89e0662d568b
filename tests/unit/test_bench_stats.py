"""The benchmarks' round statistics (issue 10 methodology) on fixed inputs, expected values
worked out by hand."""

from __future__ import annotations

import functools
import math

import pytest
from benchmarks._common import (
    Goal,
    Report,
    Spread,
    compare,
    interleave,
    interleaved,
    percentile,
    ratios,
    rounds,
    verdict,
)


def test_rounds_alternate_their_order() -> None:
    calls: list[str] = []

    def measure(name: str) -> float:
        calls.append(name)
        return float(len(calls))

    got = interleave({"A": lambda: measure("A"), "B": lambda: measure("B")}, 5)
    assert calls == ["A", "B", "B", "A", "A", "B", "B", "A", "A", "B"]
    # each measure's values in round order: the call numbers above
    assert got == {"A": (1.0, 4.0, 5.0, 8.0, 9.0), "B": (2.0, 3.0, 6.0, 7.0, 10.0)}


def test_three_measures_reverse_as_a_whole() -> None:
    calls: list[str] = []

    def measure(name: str) -> float:
        calls.append(name)
        return 0.0

    interleave({k: functools.partial(measure, k) for k in "ABC"}, 5)
    assert "".join(calls) == "ABC" "CBA" "ABC" "CBA" "ABC"


def test_fewer_than_five_rounds_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        interleave({"A": lambda: 1.0}, 4)
    monkeypatch.setenv("MEDCLAVE_BENCH_ROUNDS", "3")
    with pytest.raises(ValueError):
        rounds()
    monkeypatch.setenv("MEDCLAVE_BENCH_ROUNDS", "7")
    assert rounds() == 7


def test_median_ratio_and_spread() -> None:
    # per-round ratios 1, 2, 1.5, 3, 2.5: median 2, min 1, max 3, furthest 1 from 2 = 50%
    result = compare([2, 2, 2, 2, 2], [2, 4, 3, 6, 5])
    assert result.ratio.values == (1.0, 2.0, 1.5, 3.0, 2.5)
    assert (result.ratio.median, result.ratio.low, result.ratio.high) == (2.0, 1.0, 3.0)
    assert result.ratio.spread == 0.5
    assert result.noisy
    assert result.candidate.median == 4.0 and result.baseline.median == 2.0


def test_ratio_is_per_round_not_ratio_of_medians() -> None:
    # baseline medians 10, candidate median 20, but each round's ratio is 1: the same drift
    # hit both sides of every round.
    result = compare([5, 10, 20, 40, 80], [5, 10, 20, 40, 80])
    assert result.ratio.values == (1.0,) * 5
    assert result.ratio.spread == 0.0 and not result.noisy
    assert result.baseline.noisy  # the raw values are all over the place


def test_spread_is_the_furthest_side() -> None:
    # sorted 0.95 0.98 1.0 1.02 1.05: median 1.0; 0.05 either side -> 5%
    s = Spread.of([1.05, 0.95, 1.0, 0.98, 1.02])
    assert s.median == 1.0 and s.low == 0.95 and s.high == 1.05
    assert s.spread == pytest.approx(0.05)
    # lopsided: median 4, low 3 (25% below), high 4.4 (10% above) -> 25%
    assert Spread.of([3, 4, 4, 4.2, 4.4]).spread == pytest.approx(0.25)
    # even count: the median is the mean of the middle two (3 and 4)
    assert Spread.of([1, 2, 3, 4, 5, 6]).median == 3.5


def test_ten_percent_is_the_line() -> None:
    assert not Spread.of([0.9, 1.0, 1.0, 1.0, 1.1]).noisy  # exactly ±10%: not over it
    assert Spread.of([0.9, 1.0, 1.0, 1.0, 1.11]).noisy  # 11% above
    assert Spread.of([0.88, 1.0, 1.0, 1.0, 1.0]).noisy  # 12% below


def test_near_the_line_the_verdict_shows_the_digits() -> None:
    report = Report("t", "test")
    report.row("a", [0.8996, 1.0, 1.0, 1.0, 1.0], "x")  # 10.04% below the median: noisy
    report.row("b", [0.9004, 1.0, 1.0, 1.0, 1.0], "x")  # 9.96%: not
    assert report.rows[0].verdict_text() == "noisy (±10.04%)"
    assert report.rows[1].verdict == ""


def test_zero_median() -> None:
    assert Spread.of([0, 0, 0, 0, 0]).spread == 0.0
    assert math.isinf(Spread.of([0, 0, 0, 1, -1]).spread)
    assert Spread.of([0, 0, 0, 1, -1]).noisy


def test_verdicts() -> None:
    quiet = Spread.of([0.95, 0.98, 1.0, 1.02, 1.05])  # median 1.0, ±5%
    assert verdict(quiet, Goal(">=", 0.95, on="ratio")) == "met"
    assert verdict(quiet, Goal(">=", 1.01, on="ratio")) == "missed"
    assert verdict(quiet, Goal("<=", 1.0)) == "met"
    assert verdict(quiet, Goal("<=", 0.99)) == "missed"
    assert verdict(quiet, None) == ""
    loud = Spread.of([0.5, 1.0, 1.0, 1.0, 1.5])
    # noisy: no claim either way, however clear the median looks
    assert verdict(loud, Goal(">=", 0.1)) == "noisy"
    assert verdict(loud, Goal(">=", 10)) == "noisy"
    assert verdict(loud, None) == "noisy"


def test_report_judges_value_goals_on_the_value_and_others_on_the_ratio() -> None:
    report = Report("t", "test")
    base = [100.0, 100.0, 200.0, 100.0, 100.0]  # noisy baseline
    report.baseline("base", base, "/s")
    # values 600, 600, 1200, 600, 600 (noisy, ±100%), ratio 6 every round (quiet)
    report.row("rate", [600.0, 600.0, 1200.0, 600.0, 600.0], "/s", baseline=base,
               goal=Goal(">=", 500))
    report.row("same", [600.0, 600.0, 1200.0, 600.0, 600.0], "/s", baseline=base)
    report.row("ratio goal", [95.0, 96.0, 190.0, 94.0, 97.0], "/s", baseline=base,
               goal=Goal(">=", 0.95, on="ratio"))
    base_row, rate_row, same_row, ratio_row = report.rows
    assert base_row.verdict == "noisy" and base_row.ratio is None
    assert rate_row.verdict == "noisy"
    assert rate_row.verdict_text() == "noisy (±100%); 5/5 rounds >= 500 /s"
    assert same_row.ratio is not None and same_row.ratio.median == 6.0
    assert same_row.verdict == ""
    # ratios 0.95 0.96 0.95 0.94 0.97: median 0.95, ±2%; 0.95 >= 0.95
    assert ratio_row.verdict == "met"
    with pytest.raises(ValueError):
        report.row("no base", [1.0] * 5, "x", goal=Goal(">=", 1, on="ratio"))


def test_report_json_and_table() -> None:
    report = Report("t", "test")
    report.baseline("base", [10.0] * 5, "ms")
    report.row("cand", [11.0, 12.0, 12.0, 12.0, 13.0], "ms", baseline=[10.0] * 5,
               goal=Goal("<=", 12.5))
    cand = report.rows[1].as_json()
    assert cand["verdict"] == "met"
    assert cand["against"] == "base" and report.rows[0].as_json()["against"] is None
    assert cand["ratio"]["median"] == pytest.approx(1.2)
    assert cand["ratio"]["min"] == pytest.approx(1.1) and cand["ratio"]["max"] == pytest.approx(1.3)
    assert cand["value"]["spread"] == pytest.approx(1 / 12)
    lines = report.lines()
    assert lines[0].startswith("test (5 rounds")
    assert "1.20 1.10-1.30" in lines[3] and "met (<= 12.5 ms)" in lines[3]


def test_interleaved_pairs_rounds() -> None:
    values = iter([1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0])
    result = interleaved(lambda: next(values), lambda: next(values), 5)
    # order A B, B A, ...: A gets 1, 2(4th call), 1, 2, 1; B gets 2, 4, 2, 4, 2
    assert result.baseline.values == (1.0, 2.0, 1.0, 2.0, 1.0)
    assert result.candidate.values == (2.0, 4.0, 2.0, 4.0, 2.0)
    assert result.ratio.values == (2.0,) * 5


def test_percentile_nearest_rank() -> None:
    hundred = [float(i) for i in range(100, 0, -1)]
    assert percentile(hundred, 0.99) == 99.0
    assert percentile(hundred, 0.5) == 50.0
    assert percentile(hundred, 1.0) == 100.0
    assert percentile([5.0], 0.99) == 5.0
    assert ratios([3.0], [2.0]).values == (1.5,)
