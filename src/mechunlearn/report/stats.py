"""Means with confidence intervals over seeds, and paired method comparisons in plain words."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats


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
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return Estimate(mean, mean, mean, 1)
    sd = statistics.stdev(vals)
    half = stats.t.ppf((1 + confidence) / 2, len(vals) - 1) * sd / math.sqrt(len(vals))
    return Estimate(mean, mean - half, mean + half, len(vals))


def compare(ours: dict[int, float], theirs: dict[int, float], higher_is_better: bool) -> Estimate:
    """Paired (by seed) difference ours - theirs, signed so that positive means 'ours is better'."""
    sign = 1 if higher_is_better else -1
    seeds = sorted(set(ours) & set(theirs))
    return estimate([sign * (ours[s] - theirs[s]) for s in seeds])


def verdict(diff: Estimate, ours: str, theirs: str, metric: str) -> str:
    if diff.n == 0:
        return f"{metric}: no paired results for {ours} and {theirs}."
    seeds = f"{diff.n} seed{'s' if diff.n != 1 else ''}"
    if diff.low == diff.high == 0:
        return f"{metric}: {ours} and {theirs} tied exactly ({seeds})."
    if diff.n == 1:
        word = "beat" if diff.mean > 0 else "did not beat"
        return (f"{metric}: {ours} {word} {theirs} by {abs(diff.mean):.3f} ({seeds}: no interval, "
                "so this is not evidence either way).")
    interval = f"95% CI of the advantage {diff.low:+.3f} to {diff.high:+.3f}, {seeds}"
    if diff.low > 0:
        return f"{metric}: {ours} beat {theirs} by {diff.mean:.3f} ({interval})."
    if diff.high < 0:
        return f"{metric}: {ours} was worse than {theirs} by {-diff.mean:.3f} ({interval})."
    return f"{metric}: no clear difference between {ours} and {theirs} (mean advantage {diff.mean:+.3f}; {interval})."
