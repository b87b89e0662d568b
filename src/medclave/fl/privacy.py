"""The (ε, δ) a run actually spent, from Google's ``dp-accounting`` (RDP accountant).

The mechanism is central DP with client-side fixed clipping (Flower's
``DifferentialPrivacyClientSideFixedClipping`` and ``fixedclipping_mod``; Andrew et al. 2021,
McMahan et al. 2018): each site clips its update to norm ``C``; the aggregator averages the
clipped updates (every site weighed the same) and adds Gaussian noise of standard deviation
``z * C / n`` to the mean, ``n`` the number of sites the wrapper was told are sampled. Adding or
removing one site changes the mean of ``m`` updates by at most ``C / m``, so a round in which
``m`` sites were counted is a Gaussian mechanism with noise multiplier ``z * m / n`` (``z`` when
every site took part, smaller, so more ε, when some were dropped). Every site takes part in
every round (no sampling amplification is claimed); rounds compose, so ε grows with rounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import dp_accounting
from dp_accounting.rdp import RdpAccountant


def round_noise_multiplier(noise_multiplier: float, counted: int, sampled: int) -> float:
    return noise_multiplier * counted / sampled


def epsilon_spent(noise_multipliers: Sequence[float], delta: float) -> float:
    """ε at ``delta`` after one Gaussian mechanism per round with these multipliers."""
    if not noise_multipliers:
        return 0.0
    accountant = RdpAccountant()
    for z in noise_multipliers:
        if z <= 0:
            return float("inf")
        accountant.compose(dp_accounting.GaussianDpEvent(z))
    return float(accountant.get_epsilon(delta))
