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


def verdict(diff: Estimate, ours: str, theirs: str, metric: str, p_holm: float | None = None, comparisons: int = 1,
            alpha: float = 0.05) -> str:
    """One sentence. With ``p_holm`` the decision is the Holm-corrected one over ``comparisons``
    tests (the raw interval is still quoted); without it, the raw interval decides."""
    if diff.n == 0:
        return f"{metric}: no paired results for {ours} and {theirs}."
    seeds = f"{diff.n} seed{'s' if diff.n != 1 else ''}"
    if diff.low == diff.high == 0:
        return f"{metric}: {ours} and {theirs} tied exactly ({seeds})."
    if diff.n == 1:
        word = "was ahead of" if diff.mean > 0 else "trailed"
        return (f"{metric}: {ours} {word} {theirs} by {abs(diff.mean):.3f} ({seeds}: no interval, "
                "so this is not evidence either way).")
    interval = f"95% CI of the advantage {diff.low:+.3f} to {diff.high:+.3f}, {seeds}"
    raw_excludes_0 = diff.low > 0 or diff.high < 0
    if p_holm is None:
        decided = raw_excludes_0
    else:
        decided = p_holm <= alpha
        interval += f"; Holm-adjusted p = {p_holm:.3g} over {comparisons} comparison{'s' if comparisons != 1 else ''}"
    if decided and diff.mean > 0:
        return f"{metric}: {ours} beat {theirs} by {diff.mean:.3f} ({interval})."
    if decided:
        return f"{metric}: {ours} was worse than {theirs} by {-diff.mean:.3f} ({interval})."
    if raw_excludes_0:
        return (f"{metric}: no reliable difference between {ours} and {theirs} after correcting for {comparisons} "
                f"comparisons (mean advantage {diff.mean:+.3f}; the raw interval excludes 0: {interval}).")
    return f"{metric}: no clear difference between {ours} and {theirs} (mean advantage {diff.mean:+.3f}; {interval})."


def paired_p(ours: dict[int, float], theirs: dict[int, float]) -> float:
    """Two-sided paired t-test over the shared seeds (the test dual to ``compare``'s interval:
    p < 0.05 exactly when that 95% interval excludes 0); nan with fewer than two pairs."""
    diffs = [ours[s] - theirs[s] for s in sorted(set(ours) & set(theirs))]
    if len(diffs) < 2:
        return math.nan
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


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
