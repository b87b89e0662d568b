"""The demo cohort: a synthetic, documented "rare pediatric tumour" across five hospitals.

Nothing here is patient data: every row is drawn from the distributions below, from one seed, so
the same seed gives the same cohort on every machine. The disease is modelled loosely on
neuroblastoma (a rare embryonal tumour of early childhood): positives are younger, have higher
tumour markers (LDH, neuron-specific enolase, ferritin, urinary catecholamine metabolites), an
adrenal or paraspinal mass on imaging (often calcified), and carry more of the genetic markers
(MYCN amplification, ALK variant, 1p deletion). Prevalence is about 3%.

The split is non-IID, as hospitals are: five sites of different sizes; the paediatric oncology
referral centre (site ``a``) holds most positives; sites differ in their age mix and each lab
has its own calibration bias. Every site holds out 30% of its rows (stratified) for evaluation.

Features (:data:`FEATURES`), raw units:

==================  ===========================================================
age_months          age at presentation, months
ldh                 lactate dehydrogenase, U/L
nse                 neuron-specific enolase, ng/mL
ferritin            serum ferritin, ng/mL
vma_ratio           urine vanillylmandelic acid / creatinine, mg/g
hva_ratio           urine homovanillic acid / creatinine, mg/g
mass_mm             largest diameter of an adrenal/paraspinal mass, mm (0: none)
calcification       calcification seen in that mass (0/1)
mycn_amplified      MYCN amplification (0/1)
alk_variant         ALK pathogenic variant (0/1)
del_1p              1p36 deletion (0/1)
==================  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FEATURES: tuple[str, ...] = (
    "age_months", "ldh", "nse", "ferritin", "vma_ratio", "hva_ratio", "mass_mm",
    "calcification", "mycn_amplified", "alk_variant", "del_1p",
)
SITES: tuple[str, ...] = ("a", "b", "c", "d", "e")
# Rows per site and the share of all positives each holds: the referral centre ``a`` most.
SITE_ROWS: tuple[int, ...] = (3200, 2000, 1400, 900, 500)
POSITIVE_SHARE: tuple[float, ...] = (0.60, 0.16, 0.12, 0.08, 0.04)
PREVALENCE = 0.03
TEST_FRACTION = 0.3
DEFAULT_SEED = 20261206

# Per-site lab calibration bias (multiplicative, on LDH, NSE, ferritin) and median age (months).
_LAB_BIAS: tuple[float, ...] = (1.0, 1.08, 0.93, 1.12, 0.9)
_AGE_MEDIAN: tuple[float, ...] = (30.0, 60.0, 48.0, 72.0, 40.0)

# Public reference centres and scales of the preprocessing (log space for the labs): fixed
# constants, not statistics of anyone's data, so each site preprocesses alone and identically.
_LOG_FEATURES = frozenset({"age_months", "ldh", "nse", "ferritin", "vma_ratio", "hva_ratio"})
_CENTRE: dict[str, float] = {
    "age_months": np.log1p(48.0), "ldh": np.log1p(250.0), "nse": np.log1p(15.0),
    "ferritin": np.log1p(60.0), "vma_ratio": np.log1p(8.0), "hva_ratio": np.log1p(12.0),
    "mass_mm": 5.0, "calcification": 0.1, "mycn_amplified": 0.02, "alk_variant": 0.02,
    "del_1p": 0.03,
}
_SCALE: dict[str, float] = {
    "age_months": 1.0, "ldh": 0.5, "nse": 0.6, "ferritin": 0.8, "vma_ratio": 0.6,
    "hva_ratio": 0.6, "mass_mm": 20.0, "calcification": 0.3, "mycn_amplified": 0.15,
    "alk_variant": 0.15, "del_1p": 0.2,
}


@dataclass(frozen=True)
class SiteData:
    """One site's rows in raw units (``x``: rows x FEATURES) and labels, split train/test."""

    site: str
    x_train: NDArray[np.float64]
    y_train: NDArray[np.float64]
    x_test: NDArray[np.float64]
    y_test: NDArray[np.float64]


def _rows(rng: np.random.Generator, n: int, positive: bool, site: int) -> NDArray[np.float64]:
    bias = _LAB_BIAS[site]
    if positive:
        age = rng.lognormal(np.log(26.0), 0.8, n)
        ldh = rng.lognormal(np.log(330.0), 0.45, n) * bias
        nse = rng.lognormal(np.log(22.0), 0.65, n) * bias
        ferritin = rng.lognormal(np.log(75.0), 0.85, n) * bias
        vma = rng.lognormal(np.log(11.0), 0.65, n)
        hva = rng.lognormal(np.log(15.0), 0.6, n)
        has_mass = rng.random(n) < 0.45
        mass = np.where(has_mass, rng.gamma(3.0, 12.0, n), 0.0)
        calc = (has_mass & (rng.random(n) < 0.6)).astype(float)
        mycn = (rng.random(n) < 0.12).astype(float)
        alk = (rng.random(n) < 0.06).astype(float)
        del1p = (rng.random(n) < 0.15).astype(float)
    else:
        age = rng.lognormal(np.log(_AGE_MEDIAN[site]), 0.8, n)
        ldh = rng.lognormal(np.log(260.0), 0.35, n) * bias
        nse = rng.lognormal(np.log(14.0), 0.55, n) * bias
        ferritin = rng.lognormal(np.log(55.0), 0.8, n) * bias
        vma = rng.lognormal(np.log(8.0), 0.55, n)
        hva = rng.lognormal(np.log(12.0), 0.5, n)
        has_mass = rng.random(n) < 0.06  # benign masses, incidentalomas
        mass = np.where(has_mass, rng.gamma(2.5, 10.0, n), 0.0)
        calc = (has_mass & (rng.random(n) < 0.25)).astype(float)
        mycn = (rng.random(n) < 0.004).astype(float)
        alk = (rng.random(n) < 0.01).astype(float)
        del1p = (rng.random(n) < 0.02).astype(float)
    return np.column_stack([age, ldh, nse, ferritin, vma, hva, mass, calc, mycn, alk, del1p])


def make_cohort(seed: int = DEFAULT_SEED) -> list[SiteData]:
    """The five sites' data, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    total_positives = round(PREVALENCE * sum(SITE_ROWS))
    out: list[SiteData] = []
    for i, (site, rows) in enumerate(zip(SITES, SITE_ROWS, strict=True)):
        n_pos = round(total_positives * POSITIVE_SHARE[i])
        x = np.vstack([_rows(rng, n_pos, True, i), _rows(rng, rows - n_pos, False, i)])
        y = np.concatenate([np.ones(n_pos), np.zeros(rows - n_pos)])
        test = np.zeros(rows, dtype=bool)
        for label in (1.0, 0.0):  # stratified hold-out
            idx = np.flatnonzero(y == label)
            test[rng.choice(idx, round(TEST_FRACTION * idx.size), replace=False)] = True
        order_train = rng.permutation(np.flatnonzero(~test))
        order_test = rng.permutation(np.flatnonzero(test))
        out.append(SiteData(site, x[order_train], y[order_train], x[order_test], y[order_test]))
    return out


def preprocess(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Raw units to model inputs: log of the labs and age, then the fixed public centre and
    scale per feature, clipped to [-8, 8]. Row by row, with no statistic of anyone's data."""
    if x.ndim != 2 or x.shape[1] != len(FEATURES):
        raise ValueError(f"expected rows of {len(FEATURES)} features")
    cols = []
    for j, name in enumerate(FEATURES):
        col = np.log1p(np.maximum(x[:, j], 0.0)) if name in _LOG_FEATURES else x[:, j]
        cols.append((col - _CENTRE[name]) / _SCALE[name])
    return np.clip(np.column_stack(cols), -8.0, 8.0)


def pooled(sites: list[SiteData]) -> SiteData:
    """Every site's rows together: what centralised training (and only the demo) may see."""
    return SiteData(
        "pooled",
        np.vstack([s.x_train for s in sites]), np.concatenate([s.y_train for s in sites]),
        np.vstack([s.x_test for s in sites]), np.concatenate([s.y_test for s in sites]),
    )
