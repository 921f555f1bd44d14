"""Means with confidence intervals over seeds, and the tests, intervals and power of the paired
comparisons behind the verdict."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # 95% t-interval; equal to mean with a single seed
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def estimate(values: list[float], confidence: float = 0.95) -> Estimate:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return Estimate(mean, mean, mean, 1)
    sd = statistics.stdev(vals)
    half = stats.t.ppf((1 + confidence) / 2, len(vals) - 1) * sd / math.sqrt(len(vals))
    return Estimate(mean, mean - half, mean + half, len(vals))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control: reject where adjusted p <=
    alpha). An untestable comparison (nan) counts in the family and is never rejected."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: math.inf if math.isnan(p_values[i]) else p_values[i])
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = p_values[i]
        running = max(running, 1.0 if math.isnan(p) else min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


# --- the verdict's instruments: the paired test, equivalence, power --------------------------------

def t_test(diffs: list[float]) -> tuple[float, float, float]:
    """Mean, standard error and two-sided p of the one-sample t-test of ``diffs`` against 0."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan
    se = statistics.stdev(diffs) / math.sqrt(n)
    if se == 0:
        return mean, 0.0, 1.0 if mean == 0 else 0.0
    return mean, se, float(2 * stats.t.sf(abs(mean / se), n - 1))


def tost_p(diffs: list[float], delta: float) -> float:
    """Two one-sided t-tests of equivalence: p of 'the true difference lies outside (-delta, delta)';
    a small p says the difference is smaller than delta either way."""
    n = len(diffs)
    mean, se, _ = t_test(diffs)
    if n < 2:
        return math.nan
    if se == 0:
        return 0.0 if abs(mean) < delta else 1.0
    above = stats.t.sf((mean + delta) / se, n - 1)  # H0: difference <= -delta
    below = stats.t.cdf((mean - delta) / se, n - 1)  # H0: difference >= +delta
    return float(max(above, below))


def interval(diffs: list[float], confidence: float) -> tuple[float, float]:
    mean, se, _ = t_test(diffs)
    if math.isnan(se):
        return math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(diffs) - 1) * se
    return mean - half, mean + half


_QUANTILES = (np.arange(4000) + 0.5) / 4000


def power(effect: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs whose differences
    have standard deviation ``sd``, when the true difference is ``effect``: the noncentral t's
    tails, averaged over 4,000 quantiles of the chi-square of the variance estimate (scipy's
    noncentral t loses its tails at large shifts and degrees of freedom)."""
    df, critical = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)
    shift = effect * math.sqrt(n) / sd
    bound = critical * np.sqrt(stats.chi2.ppf(_QUANTILES, df) / df)
    return float(np.mean(stats.norm.sf(bound - shift) + stats.norm.cdf(-bound - shift)))


def mde(sd: float, n: int, alpha: float, target_power: float = 0.8) -> float:
    """The smallest true difference that the two-sided test at ``alpha`` detects with probability
    ``target_power`` from ``n`` seeds with this spread; nan below two seeds."""
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 0.0
    high = sd
    while power(high, sd, n, alpha) < target_power:
        high *= 2
    return float(optimize.brentq(lambda e: power(e, sd, n, alpha) - target_power, 0.0, high, xtol=sd * 1e-6))


def seeds_needed(sd: float, delta: float, alpha: float, target_power: float = 0.8, most: int = 10_000) -> int | None:
    """The fewest seeds whose minimum detectable effect is <= ``delta`` at this spread (None: more
    than ``most``)."""
    if math.isnan(sd):
        return None
    if mde(sd, 2, alpha, target_power) <= delta:
        return 2
    low, high = 2, 4
    while mde(sd, high, alpha, target_power) > delta:
        if high >= most:
            return None
        low, high = high, min(2 * high, most)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if mde(sd, mid, alpha, target_power) <= delta else (mid, high)
    return high


def sd_upper(sd: float, n: int, confidence: float = 0.8) -> float:
    """The one-sided upper confidence limit of a standard deviation estimated from ``n`` values
    (chi-square, n - 1 degrees of freedom): planning seeds with it reaches the target power with
    probability ``confidence`` over pilots, where the estimate itself reaches it about half the time."""
    if n < 2 or math.isnan(sd):
        return math.nan
    return sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1))
