"""The verdict's analysis (seed means: a paired t-test, its interval and two one-sided tests over
the per-seed differences) on 2,000 simulated experiments per design, with planted effects and
known seed-level and fact-level noise."""

import math

import numpy as np
import pytest

from mechunlearn.report.simulate import experiments
from mechunlearn.report.stats import interval, mde, power, seeds_needed, t_test, tost_p

N = 2000
SEED_SD, FACT_SD, DELTA = 0.05, 0.25, 0.05
DESIGNS = [(s, f) for s in (3, 5, 10, 20) for f in (16, 64)]
MC = 2 * math.sqrt(0.05 * 0.95 / N)  # two Monte-Carlo standard errors of a 5% rate


def _seed_means(effect, seeds, facts, salt):
    rng = np.random.default_rng([seeds, facts, salt])
    return experiments(N, seeds, facts, effect, SEED_SD, FACT_SD, rng).mean(axis=2).tolist()


@pytest.mark.parametrize("seeds, facts", DESIGNS)
def test_false_positives_coverage_and_equivalence_at_the_margin(seeds, facts):
    null = [t_test(d)[2] for d in _seed_means(0.0, seeds, facts, 0)]
    assert np.mean([p <= 0.05 for p in null]) <= 0.06

    planted = 0.1
    covered = [low <= planted <= high for low, high in (interval(d, 0.95) for d in _seed_means(planted, seeds, facts, 1))]
    assert np.mean(covered) >= 0.93

    at_margin = [tost_p(d, DELTA) for d in _seed_means(DELTA, seeds, facts, 2)]
    assert np.mean([p <= 0.05 for p in at_margin]) <= 0.05 + MC


def test_pooling_the_facts_as_independent_would_reject_far_too_often():
    """Why the seed is the unit: a t-test over all 10 x 16 facts ignores the seed effect."""
    rng = np.random.default_rng(7)
    data = experiments(N, 10, 16, 0.0, SEED_SD, FACT_SD, rng)
    pooled = [t_test(d.ravel().tolist())[2] for d in data]
    assert np.mean([p <= 0.05 for p in pooled]) > 0.1  # 0.13 here, against 0.05 for seed means


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_power_and_mde_agree_with_simulation(seeds):
    sd = math.sqrt(SEED_SD ** 2 + FACT_SD ** 2 / 16)
    effect = mde(sd, seeds, 0.05, 0.8)
    rejected = np.mean([t_test(d)[2] <= 0.05 for d in _seed_means(effect, seeds, 16, 3)])
    assert power(effect, sd, seeds, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert abs(rejected - 0.8) < 3 * math.sqrt(0.8 * 0.2 / N)


def test_seeds_needed_is_the_first_count_whose_mde_reaches_delta():
    sd, level = 0.12, 0.05 / 9
    n = seeds_needed(sd, DELTA, level)
    assert mde(sd, n, level) <= DELTA < mde(sd, n - 1, level)
    assert seeds_needed(0.0, DELTA, level) == 2 and seeds_needed(10.0, 1e-4, level, most=50) is None


def test_mde_falls_with_every_added_seed_up_to_thousands():
    """scipy's noncentral t lost its tails at large shifts (an MDE of 0.23 at 200 seeds after 0.05 at
    150, and 3,840 seeds where about 150 do); the power is now integrated over the variance."""
    sd, level = 0.166, 0.05 / 9
    mdes = [mde(sd, n, level) for n in (2, 3, 5, 10, 50, 100, 150, 200, 400, 1000, 4000)]
    assert all(b < a for a, b in zip(mdes, mdes[1:], strict=False)), mdes
    normal = (2.773 + 0.842) * sd / math.sqrt(4000)  # z-approximation, exact enough at 3,999 df
    assert mdes[-1] == pytest.approx(normal, rel=0.01)
    assert 140 <= seeds_needed(sd, DELTA, level) <= 155
