"""The demo cohort as documented, and the (ε, δ) accountant against independent bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medclave.fl import cohort
from medclave.fl.privacy import epsilon_spent, round_noise_multiplier


def test_the_cohort_is_as_documented() -> None:
    sites = cohort.make_cohort()
    rows = [len(s.y_train) + len(s.y_test) for s in sites]
    positives = [int(s.y_train.sum() + s.y_test.sum()) for s in sites]
    assert rows == [3200, 2000, 1400, 900, 500]
    assert 0.025 <= sum(positives) / sum(rows) <= 0.035
    assert positives[0] > sum(positives) / 2, "the referral centre holds most positives"
    assert all(s.x_train.shape[1] == len(cohort.FEATURES) for s in sites)
    # Non-IID: the sites' age distributions differ (median age of negatives).
    ages = [float(np.median(s.x_train[s.y_train == 0, 0])) for s in sites]
    assert max(ages) > 1.8 * min(ages)


def test_the_cohort_is_deterministic_in_its_seed() -> None:
    a, b, c = cohort.make_cohort(1), cohort.make_cohort(1), cohort.make_cohort(2)
    assert np.array_equal(a[0].x_train, b[0].x_train)
    assert not np.array_equal(a[0].x_train, c[0].x_train)


def test_preprocessing_uses_no_statistic_of_the_data() -> None:
    x = cohort.make_cohort()[4].x_train
    together = cohort.preprocess(x)
    alone = np.vstack([cohort.preprocess(x[i:i + 1]) for i in range(10)])
    assert np.array_equal(together[:10], alone)


def _gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """Exact ε of mu-GDP at delta (Dong, Roth, Su 2019, Cor. 2.13), by bisection:
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    def delta_of(eps: float) -> float:
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_epsilon_lies_between_the_exact_gaussian_value_and_the_plain_rdp_bound(z: float) -> None:
    delta = 1e-5
    for rounds in (1, 3, 10):
        eps = epsilon_spent([z] * rounds, delta)
        # T Gaussian mechanisms of multiplier z compose to mu-GDP with mu = sqrt(T) / z: exact.
        exact = _gaussian_dp_epsilon(math.sqrt(rounds) / z, delta)
        # RDP of order a: T a / (2 z^2); to (eps, delta): + log(1/delta) / (a - 1) (Mironov 2017).
        plain = min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1)
                    for a in np.linspace(1.01, 400, 40000))
        assert exact <= eps <= plain + 1e-9, (rounds, exact, eps, plain)


def test_epsilon_grows_with_rounds_and_with_dropped_sites() -> None:
    eps = [epsilon_spent([0.5] * t, 1e-5) for t in (1, 2, 3)]
    assert eps[0] < eps[1] < eps[2]
    assert round_noise_multiplier(0.5, 4, 5) == pytest.approx(0.4)
    assert epsilon_spent([0.5, 0.4], 1e-5) > epsilon_spent([0.5, 0.5], 1e-5)
    assert epsilon_spent([], 1e-5) == 0.0
